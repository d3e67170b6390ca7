"""The pipeline's stages: their names, in order, in one place.

A stage's name is its notebook's name and its folder's name: ``02_sft`` is ``notebooks/02_sft.ipynb`` and
writes ``runs/<profile>/02_sft/``. Code refers to a stage by the constants below, never by a typed string.
A stage depends on every stage before it (so a change upstream redoes everything after it).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

EXPLORE = "01_explore_trees"
SFT = "02_sft"
REWARD = "03_reward"
PPO = "04_ppo"
EVALUATE = "05_evaluate"
STAGES = (EXPLORE, SFT, REWARD, PPO, EVALUATE)

STAGE_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+$")  # NN_name: the number orders the stages
CHECKPOINTS_DIR = "checkpoints"  # <run_dir>/checkpoints/<stage>/: outlives the stage's temporary folder


def notebook_path(stage: str, notebooks_dir: str | Path = NOTEBOOKS_DIR) -> Path:
    return Path(notebooks_dir) / f"{stage}.ipynb"


def upstream(stage: str, stages: list[str] | tuple[str, ...] = STAGES) -> list[str]:
    """The stages ``stage`` depends on: every one before it."""
    ordered = sorted(stages)
    return ordered[: ordered.index(stage)] if stage in ordered else []


def checkpoint_dir(run_dir: str | Path, stage: str) -> Path:
    """Where a stage keeps checkpoints between attempts (its own folder is replaced whole at the end)."""
    return Path(run_dir) / CHECKPOINTS_DIR / stage
