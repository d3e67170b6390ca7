"""The kit's other inputs: Anthropic HH-RLHF preference pairs and plain prompt lists.

HH-RLHF holds each comparison as two whole transcripts, ``"\\n\\nHuman: … \\n\\nAssistant: …"``, that
nearly always share everything up to the final assistant reply (Bai et al., 2022). Split at the turn
markers, the shared turns become the prompt and the two final replies the chosen and the rejected answer.

A few published pairs part earlier: a reply that itself contains ``"\\n\\nHuman:"`` turns, or transcripts
of different lengths. They are read as the community reads them (trl's ``extract_dialogue`` for its
``hh-rlhf-helpful-base`` dataset): the prompt is the turns the two transcripts share, up to the
assistant turn where they part, and the rest of each transcript, from that turn on, is its answer,
later turns included as text. Such pairs are counted in the report's ``notes`` (``hh_parted_early``).
Only a pair whose transcripts share no user turn before they part has no prompt; it is a bad record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .records import PARQUET_MAGIC, DataError, ErrorPolicy, OnError, Report, Source, iter_records, source_name
from .views import Conversation, Pair

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")  # the first turn may come without its blank lines
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> Conversation:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> ``[{"role": "user", "content": "a"}, {"role": "assistant", ...}]``."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' or 'Assistant:' turn")
    return [{"role": _HH_ROLE[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def read_hh_pairs(path: Source, on_error: OnError = "raise", report: Report | None = None) -> list[Pair]:
    """Preference pairs from an HH-RLHF file (``.jsonl``, ``.jsonl.gz`` or ``.parquet``, ``{"chosen", "rejected"}`` a record)."""
    report = report if report is not None else Report()
    policy = ErrorPolicy(on_error, report)
    name = source_name(path)
    pairs, parted = [], 0
    for line, rec in iter_records(path, policy):
        report.read += 1
        try:
            pair, parted_early = _hh_pair(rec)
        except _BadRecord as e:
            policy(DataError(f"{name}:{line}", str(e), e.reason))
            continue
        if pair.chosen == pair.rejected:  # a tie states no preference: no pair, as OASST's tied ranks make none
            report.skip("identical_replies")
            continue
        pairs.append(pair)
        parted += parted_early
    report.kept += len(pairs)
    if parted:
        report.notes["hh_parted_early"] += parted
    report.forms[name] = f"{len(pairs)} HH-RLHF pairs" + (f" ({parted} whose transcripts part before the final reply)" if parted else "")
    return pairs


def is_hh_file(path: Source) -> bool:
    """Whether ``path`` holds HH-RLHF pairs: its first readable record (a parquet file: its columns) has
    ``chosen`` and ``rejected``. Told from the content, as every form is."""
    if isinstance(path, (str, Path)) and Path(path).is_file():
        with open(path, "rb") as f:
            if f.read(4).startswith(PARQUET_MAGIC):
                import pyarrow.parquet as pq

                try:
                    return {"chosen", "rejected"} <= set(pq.read_schema(path).names)
                except Exception:  # a damaged file: the reader that gets it names the problem
                    return False
    try:
        for _, rec in iter_records(path, ErrorPolicy("skip", Report())):
            return type(rec) is dict and "chosen" in rec and "rejected" in rec
    except DataError:  # no file, no record, damaged: the reader that gets it names the problem
        return False
    return False


_HH_NAME = {"user": "Human", "assistant": "Assistant"}


def _hh_pair(rec: Any) -> tuple[Pair, bool]:
    """The pair in one HH-RLHF record, and whether its transcripts part before their final turns."""
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
    start = _answer_start(chosen, rejected)
    if start is None:
        raise _BadRecord("no_shared_prompt", "'chosen' and 'rejected' differ before any shared 'Human:' turn: no prompt to share")
    parted_early = start < len(chosen) - 1 or start < len(rejected) - 1
    return Pair(chosen[:start], _render_rest(chosen[start:]), _render_rest(rejected[start:])), parted_early


def _answer_start(chosen: Conversation, rejected: Conversation) -> int | None:
    """Index of the assistant turn where the answers start: the last one, in both transcripts, at or before
    the first turn where they differ, with a user turn before it. None: there is none."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    for i in range(min(shared, len(chosen) - 1, len(rejected) - 1), 0, -1):
        if chosen[i]["role"] == rejected[i]["role"] == "assistant":
            return i if any(turn["role"] == "user" for turn in chosen[:i]) else None
    return None


def _render_rest(turns: Conversation) -> str:
    """The answer: the first (assistant) turn's text, later turns appended as HH-RLHF writes them."""
    return turns[0]["content"] + "".join(f"\n\n{_HH_NAME[t['role']]}: {t['content']}" for t in turns[1:])


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
