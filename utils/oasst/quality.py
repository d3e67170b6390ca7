"""Which SFT conversations to train on: every thread, the best-ranked replies only, or threads the crowd's
quality labels do not condemn, each choice counted.

* **Every usable thread** is the reference pipeline's default (``load_oasst_export`` without ``top_k``)
  and the kit's.
* **SFT-top1**: ``top_k=1`` keeps only threads whose every ranked assistant reply was ranked best (an
  unranked reply passes when it is its parent's only one). OpenAssistant trained some of its SFT models
  this way (the ``oasst-top1`` configuration of ``model/model_training/configs/config.yaml``).
* **Label filters.** Labellers answered questions about each message; OASST publishes per message the
  mean answer, 0..1. Flags (``spam`` and the red flags ``not_appropriate``, ``pii``, ``hate_speech``,
  ``sexual_content``) are the share of labellers who raised them; ``quality`` is a 5-point scale mapped
  to 0..1. A filter drops a thread when any message of the conversation trained on fails it. The
  reference pipeline applies none; a message without the label is not judged (the 100-tree file carries
  no labels at all) and is counted.

The two export forms store labels differently; :func:`message_labels` reads both:

* flat (the published HF dataset): ``{"name": [...], "value": [...], "count": [...]}``;
* nested export: ``{"quality": {"value": 0.8, "count": 3}, ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .trees import Tree
from .views import Conversation, _is_sft_end, iter_threads, to_conversation

RED_FLAGS = ("not_appropriate", "pii", "hate_speech", "sexual_content")

# Thresholds notebook 01 shows the effect of; none is a default of the kit.
EXAMPLE_VARIANTS: dict[str, dict[str, Any]] = {
    "every thread (default)": {},
    "SFT-top1 (top_k=1)": {"top_k": 1},
    "spam flagged by most labellers (max_spam=0.5)": {"max_spam": 0.5},
    "a red flag raised by most (max_red_flag=0.5)": {"max_red_flag": 0.5},
    "low quality (min_quality=0.25)": {"min_quality": 0.25},
    "all three label filters": {"max_spam": 0.5, "max_red_flag": 0.5, "min_quality": 0.25},
}


def message_labels(m: dict[str, Any]) -> dict[str, float]:
    """The message's crowd labels as ``{name: mean value}`` (labels without a value left out)."""
    labels = m.get("labels")
    if not labels:
        return {}
    if "name" in labels and isinstance(labels["name"], list):
        pairs = zip(labels["name"], labels["value"])
    else:
        pairs = ((name, v.get("value") if isinstance(v, dict) else v) for name, v in labels.items())
    return {name: float(value) for name, value in pairs if value is not None}


@dataclass(frozen=True)
class LabelFilter:
    """Thresholds on the crowd labels; None switches a filter off."""

    max_spam: float | None = None  # drop when more than this share of labellers flagged spam
    max_red_flag: float | None = None  # the same for each of RED_FLAGS
    min_quality: float | None = None  # drop when the mean quality label is below this

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_spam, self.max_red_flag, self.min_quality))

    def verdict(self, m: dict[str, Any]) -> tuple[set[str], bool]:
        """``(failed, unjudged)``: the filters ``m`` fails (``spam``, ``red_flag``, ``low_quality``), and
        whether an active filter found no label to judge it by."""
        labels = message_labels(m)
        failed, unjudged = set(), False
        if self.max_spam is not None:
            if "spam" not in labels:
                unjudged = True
            elif labels["spam"] > self.max_spam:
                failed.add("spam")
        if self.max_red_flag is not None:
            if not any(name in labels for name in RED_FLAGS):
                unjudged = True
            elif any(labels.get(name, 0.0) > self.max_red_flag for name in RED_FLAGS):
                failed.add("red_flag")
        if self.min_quality is not None:
            if "quality" not in labels:
                unjudged = True
            elif labels["quality"] < self.min_quality:
                failed.add("low_quality")
        return failed, unjudged


@dataclass
class SFTSelection:
    """The conversations chosen, and what each rule removed from the usable threads.

    ``counts``: ``threads`` (every usable SFT thread), ``removed_by_top_k`` and ``removed_by_<filter>``
    (each rule on its own, so a thread may count under several), ``removed`` (by any), ``kept``, and
    ``unjudged`` (kept threads with a message an active filter had no label for).
    """

    conversations: list[Conversation]
    counts: dict[str, int] = field(default_factory=dict)


def select_sft(
    trees: Iterable[Tree],
    top_k: int | None = None,
    max_spam: float | None = None,
    max_red_flag: float | None = None,
    min_quality: float | None = None,
) -> SFTSelection:
    """The SFT view (:func:`~utils.oasst.views.sft_conversations`) with ``top_k`` and the label filters,
    counted. With the defaults it is the SFT view itself."""
    label_filter = LabelFilter(max_spam, max_red_flag, min_quality)
    counts = {"threads": 0, "removed_by_top_k": 0, "removed_by_spam": 0, "removed_by_red_flag": 0,
              "removed_by_low_quality": 0, "removed": 0, "kept": 0, "unjudged": 0}  # fmt: skip
    verdicts: dict[int, tuple[set[str], bool]] = {}  # id(message) -> verdict: threads share their prefixes
    out = []
    for tree in trees:
        for path, clean, within_top_k in iter_threads(tree, top_k):
            if not (clean and _is_sft_end(path)):
                continue
            thread = path if path[-1]["role"] == "assistant" else path[:-1]
            counts["threads"] += 1
            failed, unjudged = set(), False
            if label_filter.active:
                for m in thread:
                    v = verdicts.get(id(m))
                    if v is None:
                        v = verdicts[id(m)] = label_filter.verdict(m)
                    failed |= v[0]
                    unjudged = unjudged or v[1]
            if not within_top_k:
                failed.add("top_k")
            for reason in failed:
                counts[f"removed_by_{reason}"] += 1
            if failed:
                counts["removed"] += 1
                continue
            counts["unjudged"] += unjudged
            out.append(to_conversation(thread))
    counts["kept"] = len(out)
    return SFTSelection(out, counts)


def compare_sft_variants(trees: list[Tree], variants: dict[str, dict[str, Any]] = EXAMPLE_VARIANTS) -> dict[str, dict[str, int]]:
    """``{variant: counts}`` of :func:`select_sft` for each set of its arguments (a table for notebook 01)."""
    return {name: select_sft(trees, **kwargs).counts for name, kwargs in variants.items()}
