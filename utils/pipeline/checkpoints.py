"""Every stage's checkpoints, the one module that reads and writes them: a killed run resumes where it stopped.

A checkpoint is resumed only by the very run that wrote it: :func:`run_key` hashes everything that decides the
training (settings, data, the weights it starts from, the reward), so a changed configuration starts fresh
instead of resuming another's checkpoint. Three kinds:

* **transformers' ``Trainer``** (SFT, reward model, DPO, RLOO) saves and resumes itself (weights, optimizer,
  schedule, random state, position in the data); its checkpoints sit in a folder named by :func:`run_key`, and
  :func:`last_complete` picks the newest whose ``trainer_state.json`` (written last) is whole, so a kill in the
  middle of a save falls back to the one before;
* **a state dict in one file** (our PPO: ``PPOTrainer.state_dict()``): :func:`save_state` writes it atomically and
  deletes older ones only after, :func:`newest_state` reads it back;
* **policy snapshots** (PPO's and RLOO's adapters at chosen updates, for the reward-against-KL curve): plain peft
  folders, :func:`snapshot_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from utils.model import distributed

TRAINER_STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_GLOB = "update-*.pt"


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
    """A short hash of settings (dicts, dataclasses) and data (datasets, lists of records, digests of weights)."""
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


def tensors_digest(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of named tensors' values (order-independent in the names), e.g. an adapter or a reward model."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# A state dict in one file (our PPO)


def save_state(folder: str | Path, update: int, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``update-N.pt``, then delete the older ones (one good checkpoint always exists).
    With several processes only the first writes (the adapters are equal on all of them)."""
    folder = Path(folder)
    path = folder / f"update-{update:06d}.pt"
    if distributed.rank() != 0:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in folder.glob(STATE_GLOB):
        if old != path:
            old.unlink()
    return path


def newest_state(folder: str | Path | None, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest state :func:`save_state` wrote in ``folder`` and its path, or None."""
    found = sorted(Path(folder).glob(STATE_GLOB)) if folder else []
    if not found:
        return None
    return found[-1], torch.load(found[-1], map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------------------------------
# Policy snapshots (PPO's and RLOO's adapters at chosen updates)


def snapshot_path(folder: str | Path, update: int) -> Path:
    """Where the policy adapter of ``update`` is kept: a plain peft folder."""
    return Path(folder) / f"update-{update:06d}"


def kept_snapshots(folder: str | Path, updates: Iterable[int]) -> dict[int, Path]:
    """``{update: peft folder}`` of the ``updates`` whose snapshot exists in ``folder``."""
    return {u: snapshot_path(folder, u) for u in updates if snapshot_path(folder, u).exists()}


def export_snapshots(folder: str | Path, dest: str | Path, updates: Iterable[int]) -> dict[int, Path]:
    """Copy the kept policy adapters into ``dest``, the stage's folder: ``{update: copy}``."""
    out = {}
    for update, path in kept_snapshots(folder, updates).items():
        target = Path(dest) / path.name
        if target.resolve() != path.resolve():
            shutil.copytree(path, target, dirs_exist_ok=True)
        out[update] = target
    return out
