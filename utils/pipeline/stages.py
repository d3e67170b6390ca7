"""The pipeline's stages: their names, their order and what each depends on, in one place.

A stage's name is its notebook's name and its folder's name: ``02_sft`` is ``notebooks/02_sft.ipynb`` and
writes ``runs/<profile>/02_sft/``. Code refers to a stage by the constants below, never by a typed string.

The number orders the stages; two stages may share one when they are alternatives built on the same inputs
(``04_dpo``, ``04_ppo`` and ``04_rloo``: three ways to align the SFT model with the same preferences). What a stage depends
on is written out in :data:`DEPENDS_ON`: a change in a stage redoes the stages that depend on it, directly or
not, and nothing else. A stage the table does not know (a user's own ``06_extra``) depends on every stage
with a lower number.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

EXPLORE = "01_explore_trees"
SFT = "02_sft"
REWARD = "03_reward"
DPO = "04_dpo"
PPO = "04_ppo"
RLOO = "04_rloo"
EVALUATE = "05_evaluate"
STAGES = (EXPLORE, SFT, REWARD, DPO, PPO, RLOO, EVALUATE)  # in sorted() order: the runner and the profiles sort stage names

# Each stage's direct dependencies. SFT and the reward models read the data themselves, not stage 01's
# output: a change to 01 (which tree to draw) must not retrain hours of SFT on a GPU profile. The reward
# models read text, not the policy: a new SFT model does not retrain them. DPO, PPO and RLOO are alternatives: all start from
# the SFT model and the reward stage (its pairs, or its reward model), none reads another; the evaluation compares them, so it
# depends on all three.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    EXPLORE: (),
    SFT: (),
    REWARD: (),
    DPO: (SFT, REWARD),
    PPO: (SFT, REWARD),
    RLOO: (SFT, REWARD),
    EVALUATE: (DPO, PPO, RLOO),
}

# Each migrated stage's parameters dataclass (module, class): the one place its defaults are written. The notebook's
# parameters cell is generated from it (`python -m utils.pipeline.repo sync`) and profiles are checked against its annotations.
PARAMS: dict[str, tuple[str, str]] = {
    EXPLORE: ("utils.explore.params", "ExploreParams"),
    SFT: ("utils.sft.params", "SFTParams"),
    REWARD: ("utils.reward.params", "RewardParams"),
    PPO: ("utils.ppo.params", "PPOParams"),
    DPO: ("utils.dpo.params", "DPOParams"),
    RLOO: ("utils.rloo.params", "RLOOParams"),
    EVALUATE: ("utils.evaluate.params", "EvaluateParams"),
}

STAGE_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+$")  # NN_name: the number orders the stages
CHECKPOINTS_DIR = "checkpoints"  # <run_dir>/checkpoints/<stage>/: outlives the stage's temporary folder


def notebook_path(stage: str, notebooks_dir: str | Path = NOTEBOOKS_DIR) -> Path:
    return Path(notebooks_dir) / f"{stage}.ipynb"


def stage_number(stage: str) -> int:
    return int(stage.split("_", 1)[0])


def direct_dependencies(stage: str, stages: list[str] | tuple[str, ...] = STAGES) -> list[str]:
    """The stages of ``stages`` that ``stage`` reads directly (see :data:`DEPENDS_ON`)."""
    if stage in DEPENDS_ON:
        return [s for s in sorted(stages) if s in DEPENDS_ON[stage]]
    return [s for s in sorted(stages) if stage_number(s) < stage_number(stage)]


def upstream(stage: str, stages: list[str] | tuple[str, ...] = STAGES) -> list[str]:
    """Every stage of ``stages`` that ``stage`` depends on, directly or through another, in the stages' order.

    A stage missing from ``stages`` (a profile that leaves it out) passes its own dependencies on.
    """
    known = set(stages) | set(DEPENDS_ON)
    found: set[str] = set()
    todo = [stage]
    while todo:
        for dep in direct_dependencies(todo.pop(), sorted(known)):
            if dep not in found:
                found.add(dep)
                todo.append(dep)
    return [s for s in sorted(stages) if s in found]


def downstream(stage: str, stages: list[str] | tuple[str, ...] = STAGES) -> list[str]:
    """``stage`` and every stage of ``stages`` that depends on it, in order: what ``--from stage`` runs."""
    return [s for s in sorted(stages) if s == stage or stage in upstream(s, stages)]


def params_class(stage: str) -> type | None:
    """The stage's parameters dataclass (:data:`PARAMS`), or None for a stage whose notebook cell is its only record."""
    import importlib

    if stage not in PARAMS:
        return None
    module, name = PARAMS[stage]
    return getattr(importlib.import_module(module), name)


def params_source(stage: str) -> str:
    """Where the stage's defaults are written, as the generated cell names it: ``utils/reward/params.py (RewardParams)``."""
    module, name = PARAMS[stage]
    return f"{module.replace('.', '/')}.py ({name})"


def checkpoint_dir(run_dir: str | Path, stage: str) -> Path:
    """Where a stage keeps checkpoints between attempts (its own folder is replaced whole at the end)."""
    return Path(run_dir) / CHECKPOINTS_DIR / stage
