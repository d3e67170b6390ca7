"""Trainer checkpoints that let a killed SFT or reward-model run resume where it stopped.

transformers' ``Trainer`` does the saving and the resuming (weights, optimizer, schedule, random state,
position in the data); this module decides where checkpoints live and which one a run may resume:

* a run's checkpoints sit in a folder named by :func:`run_key`, a hash of everything that decides the
  training (settings, data, base model), so a changed configuration starts fresh instead of resuming
  another's checkpoint;
* :func:`last_complete` picks the newest checkpoint whose ``trainer_state.json`` (written last) is whole,
  so a kill in the middle of a save falls back to the one before.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

TRAINER_STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _hash_part(h, part: Any) -> None:
    from datasets import Dataset

    if isinstance(part, Dataset):  # its rows, serialized as Arrow (a slice writes only its own rows)
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        table = part.data.table
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(sink.getvalue().to_pybytes())
        h.update(json.dumps(part._indices is not None).encode())
        if part._indices is not None:
            h.update(repr(part._indices.column(0).to_pylist()).encode())
        return
    h.update(json.dumps(part, sort_keys=True, default=lambda o: asdict(o) if is_dataclass(o) else repr(o)).encode())


def run_key(*parts: Any) -> str:
    """A short hash of settings (dicts, dataclasses) and data (datasets, lists of records)."""
    h = hashlib.sha256()
    for part in parts:
        _hash_part(h, part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def last_complete(folder: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written to the end, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir())
    for _, path in reversed(found):
        try:
            json.loads((path / TRAINER_STATE).read_text())
            return path
        except (OSError, ValueError):
            continue
    return None


def tokens_seen(checkpoint: str | Path) -> int:
    """Input tokens trained on up to ``checkpoint`` (transformers counts them in the trainer state)."""
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text()).get("num_input_tokens_seen", 0))


def remove(folder: str | Path) -> None:
    """A finished run's checkpoints: nothing will resume them."""
    shutil.rmtree(folder, ignore_errors=True)
