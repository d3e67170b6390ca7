"""Reading records: files (.jsonl, .jsonl.gz, .parquet), a Hub dataset (``hf:NAME[:SPLIT]``) or a ``datasets.Dataset``.

The form is told from the content (gzip and parquet magic bytes, then the records' keys), never from
the file name alone. Every problem becomes one :class:`DataError` line ``FILE:LINE: problem``; the
:class:`ErrorPolicy` either raises it (the default) or counts it in the :class:`Report` and goes on.
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import orjson

OnError = Literal["raise", "skip"]
Source = Union[str, Path, Any]  # a path, "hf:<dataset>[:split]", or a datasets.Dataset of flat messages

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"

ROLES = ("prompter", "assistant")
# Fields the derivations read, with the one type each may have besides null. Everything else in a
# record (labels, emojis, detoxify, review_count, model_name, ...) is kept as it is, unchecked.
TYPED_FIELDS: tuple[tuple[str, type], ...] = (
    ("parent_id", str),
    ("lang", str),
    ("deleted", bool),
    ("synthetic", bool),
    ("review_result", bool),
    ("rank", int),
    ("tree_state", str),
    ("message_tree_id", str),
)


class DataError(ValueError):
    """One bad input. ``str(e)`` is a single line ``WHERE: problem``; ``reason`` is its skip-count key."""

    def __init__(self, where: str, problem: str, reason: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem, self.reason = where, problem, reason


@dataclass
class Report:
    """The account of a read: every message read is either kept or skipped for a counted reason.

    A record that could not be parsed at all (bad JSON, invalid UTF-8) counts as one message.
    """

    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    forms: dict[str, str] = field(default_factory=dict)  # source name -> what it held
    notes: Counter = field(default_factory=Counter)  # kept records read in a way worth knowing, by kind

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def drop_kept(self, reason: str, n: int) -> None:
        """Move ``n`` kept messages to ``skipped[reason]`` (a whole tree left out)."""
        self.kept -= n
        self.skipped[reason] += n

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def balanced(self) -> bool:
        return self.read == self.kept + self.n_skipped

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "skipped": dict(sorted(self.skipped.items())), "forms": dict(self.forms),
                "notes": dict(sorted(self.notes.items()))}


@dataclass
class ErrorPolicy:
    """``raise``: stop at the first problem. ``skip``: count the problem's messages as skipped."""

    on_error: OnError
    report: Report

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def __call__(self, error: DataError, n_messages: int = 1) -> None:
        if self.on_error == "raise":
            raise error
        self.report.skip(error.reason, n_messages)


HUB_PREFIX = "hf:"


def hub_dataset(spec: str):
    """``OpenAssistant/oasst1`` (every split, concatenated: the kit makes its own split) or
    ``OpenAssistant/oasst1:train``, through ``datasets.load_dataset`` (downloaded once, then cached)."""
    import datasets

    name, _, split = spec.partition(":")
    try:
        data = datasets.load_dataset(name, split=split or None)
    except Exception as e:  # offline, unknown name, no such split: all end the same way for the user
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(HUB_PREFIX + spec, f"cannot load from the Hugging Face Hub: {first_line}", "hub_unavailable") from None
    if isinstance(data, datasets.DatasetDict):
        data = datasets.concatenate_datasets([data[k] for k in sorted(data)])
    return data


def source_name(source: Source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"


def iter_records(source: Source, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_or_row, record)`` for each record of ``source``; unreadable lines go to ``policy``.

    Blank lines are not records. An input without a single record is an error (there is nothing to
    skip), whatever the policy.
    """
    name = source_name(source)
    if isinstance(source, str) and source.startswith(HUB_PREFIX):  # hf:OpenAssistant/oasst1[:split]
        source = hub_dataset(source[len(HUB_PREFIX):])
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(name, "no such file", "missing_file")
        with path.open("rb") as f:
            magic = f.read(4)
        if magic.startswith(PARQUET_MAGIC):
            records: Iterator[tuple[int, Any]] = _rows(_parquet_rows(path, name))
        elif magic.startswith(GZIP_MAGIC):
            records = _jsonl(gzip.open(path, "rb"), name, policy)
        else:
            records = _jsonl(path.open("rb"), name, policy)
    elif hasattr(source, "to_list") and hasattr(source, "column_names"):  # datasets.Dataset
        records = _rows(source.to_list())
    else:
        raise TypeError(f"cannot read {type(source).__name__}: give a path or a datasets.Dataset")
    empty, bad_before = True, policy.report.read  # bad lines are counted as read as they are skipped
    for item in records:
        empty = False
        yield item
    if empty and policy.report.read == bad_before:
        raise DataError(name, "empty input: no records", "empty")


def _rows(rows: list[Any]) -> Iterator[tuple[int, Any]]:
    return zip(range(1, len(rows) + 1), rows)


def _parquet_rows(path: Path, name: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(name, f"unreadable parquet file: {e}".splitlines()[0], "bad_parquet") from None


def _jsonl(f, name: str, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    with f:
        try:
            for lineno, line in enumerate(f, 1):
                try:
                    yield lineno, loads(line)
                except JSONDecodeError as e:
                    if line.isspace():  # a blank line is no record (tested here, off the common path)
                        continue
                    policy.report.read += 1
                    policy(_decode_error(f"{name}:{lineno}", line, e))
        except (OSError, EOFError) as e:  # a damaged or truncated gzip stream
            raise DataError(name, f"unreadable file: {e}", "bad_file") from None


def _decode_error(where: str, line: bytes, e: Exception) -> DataError:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as u:
        return DataError(where, f"invalid UTF-8 at byte {u.start}", "bad_utf8")
    return DataError(where, f"invalid JSON: {str(e).splitlines()[0]}", "bad_json")


def check_message(m: dict[str, Any]) -> tuple[str, str] | None:
    """``(reason, problem)`` when ``m`` cannot be a message, else None. It runs once per message, so
    the common case is one chain of type tests; only a failing message gets the detailed diagnosis."""
    g = m.get
    if (
        type(g("message_id")) is str
        and type(g("text")) is str
        and g("role") in ROLES
        and type(g("parent_id")) in _STR
        and type(g("lang")) in _STR
        and type(g("deleted")) in _BOOL
        and type(g("synthetic")) in _BOOL
        and type(g("review_result")) in _BOOL
        and type(g("rank")) in _INT
        and type(g("tree_state")) in _STR
        and type(g("message_tree_id")) in _STR
    ):
        return None
    return _diagnose(m)


_STR, _BOOL, _INT = (str, type(None)), (bool, type(None)), (int, type(None))


def _diagnose(m: dict[str, Any]) -> tuple[str, str]:
    for key in ("message_id", "text", "role"):
        v = m.get(key)
        if v is None:
            return "missing_field", f"missing field {key!r}"
        if type(v) is not str:
            return "wrong_type", f"field {key!r} should be a string, got {type(v).__name__}"
    if m["role"] not in ROLES:
        return "bad_value", f"message {m['message_id']}: role should be 'prompter' or 'assistant', got {m['role']!r}"
    for key, typ in TYPED_FIELDS:
        v = m.get(key)
        if v is not None and type(v) is not typ:
            return "wrong_type", f"message {m['message_id']}: field {key!r} should be {typ.__name__} or null, got {type(v).__name__}"
    raise AssertionError(f"check_message and _diagnose disagree on {m!r}")
