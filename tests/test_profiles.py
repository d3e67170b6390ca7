"""Profiles are data the notebooks understand: every key is a declared parameter, and each notebook's
defaults are the tiny profile, so running a notebook by hand is running `tiny`."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes.run import notebook_defaults
from utils.profile import PROFILES_DIR, REPO_ROOT, load_profile

NOTEBOOKS = REPO_ROOT / "notebooks"
PROFILES = sorted(PROFILES_DIR.glob("*.yaml")) + [REPO_ROOT / "tests" / "profiles" / "micro.yaml"]
STAGES = ["01_explore_trees", "02_sft", "03_reward", "04_ppo", "05_evaluate"]


def declared(stage: str) -> dict:
    return notebook_defaults(NOTEBOOKS / f"{stage}.ipynb")


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_has_every_stage_and_only_declared_keys(path: Path):
    profile = load_profile(path)
    assert sorted(profile.stages) == STAGES
    for stage in STAGES:
        unknown = set(profile.stage_params(stage)) - set(declared(stage))
        assert not unknown, f"{path.name}: {stage} sets undeclared parameters {sorted(unknown)}"


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_defaults_are_the_tiny_profile(stage: str):
    tiny = load_profile("tiny").stage_params(stage)
    defaults = declared(stage)
    assert defaults["run_dir"] == "runs/tiny"
    assert defaults["out_dir"] == f"runs/tiny/{stage}"
    for key, value in tiny.items():
        assert key in defaults, f"{stage}: tiny sets {key!r}, the notebook does not declare it"
        assert defaults[key] == value, f"{stage}: {key} defaults to {defaults[key]!r}, tiny says {value!r}"


@pytest.mark.parametrize("stage", STAGES)
def test_notebooks_are_committed_without_outputs(stage: str):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and not any(c.outputs or c.execution_count for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
