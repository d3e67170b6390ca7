"""The kit's other inputs: Anthropic HH-RLHF preference pairs and plain prompt lists.

HH-RLHF holds each comparison as two whole transcripts, ``"\\n\\nHuman: … \\n\\nAssistant: …"``, that
share everything up to the final assistant reply (Bai et al., 2022). Split at the turn markers, the
shared turns become the prompt and the two final replies the chosen and the rejected answer.
"""

from __future__ import annotations

import re
from typing import Any

from .records import DataError, ErrorPolicy, OnError, Report, Source, iter_records, source_name
from .views import Conversation, Pair

_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> Conversation:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> ``[{"role": "user", "content": "a"}, {"role": "assistant", ...}]``."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' or 'Assistant:' turn")
    return [{"role": _HH_ROLE[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def read_hh_pairs(path: Source, on_error: OnError = "raise", report: Report | None = None) -> list[Pair]:
    """Preference pairs from an HH-RLHF file (``.jsonl`` or ``.jsonl.gz``, ``{"chosen", "rejected"}`` a line)."""
    report = report if report is not None else Report()
    policy = ErrorPolicy(on_error, report)
    name = source_name(path)
    pairs = []
    for line, rec in iter_records(path, policy):
        report.read += 1
        try:
            pairs.append(_hh_pair(rec))
        except _BadRecord as e:
            policy(DataError(f"{name}:{line}", str(e), e.reason))
    report.kept = len(pairs)
    report.forms[name] = f"{len(pairs)} HH-RLHF pairs"
    return pairs


def _hh_pair(rec: Any) -> Pair:
    if type(rec) is not dict:
        raise _BadRecord("wrong_type", f"expected a JSON object with 'chosen' and 'rejected', got {type(rec).__name__}")
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise _BadRecord("missing_field", f"missing field {key!r}")
        if type(rec[key]) is not str:
            raise _BadRecord("wrong_type", f"field {key!r} should be a string, got {type(rec[key]).__name__}")
    try:
        chosen, rejected = parse_hh_transcript(rec["chosen"]), parse_hh_transcript(rec["rejected"])
    except ValueError as e:
        raise _BadRecord("bad_value", str(e)) from None
    for key, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            raise _BadRecord("bad_value", f"{key!r} does not end with an 'Assistant:' turn")
    if chosen[:-1] != rejected[:-1]:
        raise _BadRecord("bad_value", "'chosen' and 'rejected' differ before their final reply")
    if not chosen[:-1]:
        raise _BadRecord("bad_value", "no 'Human:' turn before the final reply")
    return Pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])


class _BadRecord(Exception):
    def __init__(self, reason: str, problem: str):
        super().__init__(problem)
        self.reason = reason


def read_prompts(path: Source, on_error: OnError = "raise", report: Report | None = None) -> list[str]:
    """User prompts, one a line: a JSON string, or an object with a ``prompt`` or ``text`` string."""
    report = report if report is not None else Report()
    policy = ErrorPolicy(on_error, report)
    name = source_name(path)
    prompts = []
    for line, rec in iter_records(path, policy):
        report.read += 1
        text = rec.get("prompt", rec.get("text")) if type(rec) is dict else rec
        if type(text) is str:
            prompts.append(text)
        else:
            policy(DataError(f"{name}:{line}", f"expected a JSON string or an object with a 'prompt' string, got {_describe(rec)}", "wrong_type"))
    report.kept = len(prompts)
    report.forms[name] = f"{len(prompts)} prompts"
    return prompts


def _describe(rec: Any) -> str:
    return "an object without one" if type(rec) is dict else type(rec).__name__
