"""PPO's checkpoints as files: save the trainer's ``state_dict()``, and resume only the very run that saved it.

A checkpoint is resumed only by a trainer with the same **fingerprint**: a hash of everything the training
depends on, namely the configuration, the prompts, the policy it started from (the SFT adapter's weights) and
the reward it is trained against (the reward model's weights, where the reward function says what they are).
So after SFT or the reward model changed, a leftover checkpoint is ignored and PPO starts again; it never
hands back the old run's adapter as if it were the new one.

Checkpoints are written atomically and older ones deleted only after the new one is complete, so one good
checkpoint always exists. With several processes the first writes (the adapters are equal on all of them).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from utils import distributed

if TYPE_CHECKING:
    from utils.ppo.trainer import PPOTrainer

CHECKPOINT_GLOB = "update-*.pt"
# After a resume with several processes, each process but the first reseeds its sampling generator from the
# update number (the checkpoint holds only the first process's generator); this spreads those seeds apart.
RESUME_RESEED_STRIDE = 7919


def tensors_digest(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of named tensors' values (order-independent in the names), e.g. an adapter or a reward model."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_fingerprint(config: Any, prompt_ids: list[list[int]], initial_policy: str, reward: str | None) -> str:
    """The hash a checkpoint must match to be resumed: settings (``PPOParams.trajectory``), prompts, starting policy,
    reward."""
    payload = json.dumps([config.trajectory(), prompt_ids, initial_policy, reward])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_path(checkpoint_dir: Path, update: int) -> Path:
    return checkpoint_dir / f"update-{update:06d}.pt"


def save_checkpoint(trainer: "PPOTrainer") -> Path:
    """Write the trainer's full state atomically, then delete older checkpoints."""
    assert trainer.checkpoint_dir is not None, "PPOTrainer has no checkpoint_dir"
    path = checkpoint_path(trainer.checkpoint_dir, trainer.update)
    if distributed.rank() != 0:
        trainer.last_checkpoint = path
        return path
    trainer.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(trainer.state_dict(), tmp)
    os.replace(tmp, path)
    for old in trainer.checkpoint_dir.glob(CHECKPOINT_GLOB):
        if old != path:
            old.unlink()
    trainer.last_checkpoint = path
    return path


def resume(trainer: "PPOTrainer") -> bool:
    """Load the newest checkpoint in the trainer's ``checkpoint_dir`` if its fingerprint is the trainer's."""
    found = sorted(trainer.checkpoint_dir.glob(CHECKPOINT_GLOB)) if trainer.checkpoint_dir else []
    if not found:
        return False
    state = torch.load(found[-1], map_location=trainer.model.device, weights_only=True)
    if state["fingerprint"] != trainer.fingerprint:
        trainer.log(f"{found[-1]} was made by another run (another configuration, prompts, SFT adapter or reward model): "
                    "starting from scratch")
        return False
    trainer.load_state_dict(state)
    trainer.last_checkpoint = found[-1]
    trainer.log(f"resumed from {found[-1]} (update {trainer.update})")
    return True


def snapshot_path(folder: str | Path, update: int) -> Path:
    """Where the policy adapter of ``update`` is kept (PPO's and RLOO's snapshots alike): a plain peft folder."""
    return Path(folder) / f"update-{update:06d}"


def kept_snapshots(folder: str | Path, updates: Iterable[int]) -> dict[int, Path]:
    """``{update: peft folder}`` of the ``updates`` whose snapshot exists in ``folder``."""
    return {u: snapshot_path(folder, u) for u in updates if snapshot_path(folder, u).exists()}


def export_snapshots(folder: str | Path, dest: str | Path, updates: Iterable[int]) -> dict[int, Path]:
    """Copy the kept policy adapters into ``dest``, the stage's folder: ``{update: copy}``."""
    import shutil

    out = {}
    for update, path in kept_snapshots(folder, updates).items():
        target = Path(dest) / path.name
        if target.resolve() != path.resolve():
            shutil.copytree(path, target, dirs_exist_ok=True)
        out[update] = target
    return out
