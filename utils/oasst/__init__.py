"""The OASST data layer: read exports, build conversation trees, derive the SFT / RM / RL views.

Forms read (told apart by content): flat messages (the published ``OpenAssistant/oasst1`` / ``oasst2``
schema) as .jsonl, .jsonl.gz, .parquet or a ``datasets.Dataset``; nested export trees as .jsonl or
.jsonl.gz; HH-RLHF pairs; plain prompt lists. Typical use::

    from utils.oasst import load_split, sft_conversations, rm_groups, preference_pairs
    split = load_split(["data/oasst1_en_validation_messages.jsonl"], ["data/oasst_en_100_trees.jsonl"])
    convs = sft_conversations(split.train)
    pairs = preference_pairs(rm_groups(split.train))

Modules: ``records`` (files, errors, the read account), ``trees`` (building, usable trees), ``views``
(the reference pipeline's sft / rm / rl semantics), ``quality`` (SFT-top1 and the label filters),
``split``, ``external`` (HH-RLHF, prompts), ``trl_format`` (datasets for trl), ``cli``
(``python -m utils.oasst stats``).
"""

from .external import is_hh_file, parse_hh_transcript, read_hh_pairs, read_prompts
from .quality import LabelFilter, SFTSelection, compare_sft_variants, message_labels, select_sft
from .records import DataError, Report
from .split import Split, load_split
from .trl_format import to_pairs_dataset, to_prompts_dataset, to_sft_dataset
from .trees import Tree, iter_messages, load_trees, read_trees, select_trees, usable_reason
from .views import (
    Conversation,
    Pair,
    RankGroup,
    count_views,
    iter_threads,
    message_texts,
    preference_pairs,
    rl_prompts,
    rm_groups,
    sft_conversations,
    to_conversation,
)

__all__ = [
    "Conversation", "DataError", "LabelFilter", "Pair", "RankGroup", "Report", "SFTSelection", "Split", "Tree",
    "compare_sft_variants", "count_views", "is_hh_file", "iter_messages", "iter_threads", "load_split", "load_trees",
    "message_labels", "message_texts", "parse_hh_transcript", "preference_pairs", "read_hh_pairs",
    "read_prompts", "read_trees", "rl_prompts", "rm_groups", "select_sft", "select_trees",
    "sft_conversations", "to_conversation",
    "to_pairs_dataset", "to_prompts_dataset", "to_sft_dataset", "usable_reason",
]
