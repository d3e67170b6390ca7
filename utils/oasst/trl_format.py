"""The views as ``datasets.Dataset`` in the conversational formats trl's trainers read.

* SFT: ``{"messages": [{role, content}, ...]}``;
* preferences: ``{"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``, the
  conversational explicit-prompt format of trl's RewardTrainer and DPOTrainer;
* prompts: ``{"prompt": [...]}`` (prompt-only, for RL).
"""

from __future__ import annotations

from typing import Sequence

from .views import Conversation, Pair


def _dataset(columns: dict):
    from datasets import Dataset  # imported here: reading and stats do not need it

    return Dataset.from_dict(columns)


def to_sft_dataset(conversations: Sequence[Conversation]):
    return _dataset({"messages": list(conversations)})


def to_pairs_dataset(pairs: Sequence[Pair]):
    return _dataset(
        {
            "prompt": [p.prompt for p in pairs],
            "chosen": [[{"role": "assistant", "content": p.chosen}] for p in pairs],
            "rejected": [[{"role": "assistant", "content": p.rejected}] for p in pairs],
        }
    )


def to_prompts_dataset(conversations: Sequence[Conversation]):
    return _dataset({"prompt": list(conversations)})
