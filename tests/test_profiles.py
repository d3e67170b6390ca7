"""Profiles are data the notebooks understand: every key is a declared parameter with a value of its type,
and a profile lists only what it changes (the notebooks' parameters cells hold the defaults, `tiny`'s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.pipeline.notebook_params import ParameterError, declared_parameters, notebook_defaults
from utils.pipeline.profile import PROFILES_DIR, REPO_ROOT, load_profile
from utils.pipeline.stages import STAGES, notebook_path

PROFILES = sorted(PROFILES_DIR.glob("*.yaml")) + [REPO_ROOT / "tests" / "profiles" / "micro.yaml"]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_has_every_stage_and_only_declared_keys_of_the_right_type(path: Path):
    profile = load_profile(path)
    assert sorted(profile.stages) == list(STAGES)
    for stage in STAGES:
        params = profile.stage_params(stage)  # raises on an undeclared key, a wrong type or a missing file
        assert set(params) == set(notebook_defaults(notebook_path(stage))) - {"run_dir", "out_dir"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_lists_only_what_it_changes(path: Path):
    """Against the notebook's defaults, or, for a profile that extends another, against what it would inherit."""
    profile = load_profile(path)
    for stage in STAGES:
        defaults = profile.parent.stage_params(stage) if profile.parent else notebook_defaults(notebook_path(stage))
        for key, value in profile.own.get(stage, {}).items():
            if isinstance(value, dict):
                same = sorted(k for k, v in value.items() if defaults[key].get(k) == v)
                assert not same, f"{path.name}: {stage}.{key} repeats what it would get anyway for {same}"
            else:
                assert value != defaults[key] or type(value) is not type(defaults[key]), \
                    f"{path.name}: {stage}.{key} = {value!r} is what it would get anyway: leave it out"


def test_tiny_is_the_notebooks_defaults():
    tiny = load_profile("tiny")
    assert all(tiny.overrides(stage) == {} for stage in STAGES)
    assert len((PROFILES_DIR / "tiny.yaml").read_text().splitlines()) <= 40
    for stage in STAGES:
        defaults = notebook_defaults(notebook_path(stage))
        assert (defaults["run_dir"], defaults["out_dir"]) == ("runs/tiny", f"runs/tiny/{stage}")


def test_a_wrong_type_names_profile_stage_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "stages": {"02_sft": {"max_steps": "six", "tiny_base": {"steps": 10}}}}))
    with pytest.raises(ParameterError, match=r"p.yaml: stage 02_sft: max_steps: expected an int .* got 'six'"):
        load_profile(path).stage_params("02_sft")
    path.write_text(yaml.safe_dump({"name": "p", "stages": {"02_sft": {"tiny_base": {"steps": 10, "stepz": 3}}}}))
    with pytest.raises(ParameterError, match=r"stage 02_sft: tiny_base: unknown entries stepz"):
        load_profile(path).stage_params("02_sft")
    path.write_text(yaml.safe_dump({"name": "p", "stages": {"03_reward": {"lora_layers": [4, "five"]}}}))
    with pytest.raises(ParameterError, match=r"lora_layers\[1\]: expected an int"):
        load_profile(path).stage_params("03_reward")


def test_type_rules_follow_the_params_annotations(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "stages": {
        "02_sft": {"tiny_base": {"steps": 10}, "lora_target_modules": ["dense"], "num_train_epochs": 2},
        "03_reward": {"lora_layers": None, "epochs": 2},   # list[int] | None; an int is a fine float
        "04_ppo": {"quantization": "nf4"},                 # Literal["nf4", "none"] | None
    }}))
    profile = load_profile(path)
    sft = profile.stage_params("02_sft")
    assert sft["tiny_base"]["steps"] == 10 and sft["tiny_base"]["vocab_size"] == 4096  # merged into the default dict
    assert sft["lora_target_modules"] == ["dense"]  # str | list[str]
    reward = profile.stage_params("03_reward")
    assert reward["lora_layers"] is None and reward["epochs"] == 2.0 and isinstance(reward["epochs"], float)
    assert profile.stage_params("04_ppo")["quantization"] == "nf4"
    for stage, key, value, message in (("02_sft", "max_steps", None, "max_steps: expected an int"),
                                       ("04_ppo", "quantization", "int8", "quantization: 'int8' is not one of nf4, none"),
                                       ("01_explore_trees", "on_error", "skipp", "on_error: 'skipp' is not one of raise, skip")):
        path.write_text(yaml.safe_dump({"name": "p", "stages": {stage: {key: value}}}))
        with pytest.raises(ParameterError, match=message):
            load_profile(path).stage_params(stage)


@pytest.mark.parametrize("stage", STAGES)
def test_notebooks_are_committed_without_outputs(stage: str):
    import nbformat

    nb = nbformat.read(notebook_path(stage), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and not any(c.outputs or c.execution_count for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.parametrize("stage", STAGES)
def test_notebooks_never_reassign_a_parameter(stage: str):
    """A parameter holds through the whole notebook: what the reader sees in the parameters cell is what ran."""
    import ast

    import nbformat

    params = set(declared_parameters(notebook_path(stage)))
    nb = nbformat.read(notebook_path(stage), as_version=4)
    body = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    for cell in body:
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))  # magics
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assert node.id not in params, f"{stage}: a cell assigns the parameter {node.id!r}"


CHECKPOINTING = {"02_sft": "save_steps", "03_reward": "save_steps", "04_dpo": "save_steps", "04_ppo": "checkpoint_every",
                 "04_rloo": "save_steps"}


@pytest.mark.parametrize("path", [p for p in PROFILES if not load_profile(p).offline], ids=lambda p: p.stem)
def test_a_gpu_profile_checkpoints_every_training_stage(path: Path):
    """A GPU run takes an hour or more and a Colab session ends without warning: no training stage may start over."""
    profile = load_profile(path)
    missing = [f"{stage}.{key}" for stage, key in CHECKPOINTING.items() if not profile.stage_params(stage)[key]]
    assert not missing, f"{path.name} never checkpoints {missing}"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_the_kl_controller_can_move_beta_within_the_run(path: Path):
    """β moves by at most e^(0.2 n/horizon) over n replies: a horizon near the run's length pins it near its start."""
    import math

    p = load_profile(path).stage_params("04_ppo")
    if p["target_kl"] is None:
        return
    replies = p["batch_size"] * p["replies_per_prompt"]  # per update
    reach = math.exp(0.2 * p["updates"] * replies / p["kl_horizon"])
    assert reach >= 1.5, f"{path.name}: over {p['updates']} updates of {replies} replies beta can move x{reach:.2f} at most"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_draws_a_reward_against_kl_curve_of_at_least_4_points(path: Path):
    """Stage 05 fits reward against sqrt(KL): fewer than 4 snapshots (few updates round points together) fit nothing."""
    from utils.ppo.stage import snapshot_schedule

    p = load_profile(path).stage_params("04_ppo")
    points = snapshot_schedule(p["updates"], p["kl_curve_points"])
    assert len(points) >= 4 and points[0] == 0 and points[-1] == p["updates"], f"{path.name}: snapshots at {points}"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_keeps_at_least_4_rloo_snapshots_for_the_reward_against_kl_curve(path: Path):
    """As 04_ppo's: the schedule of utils.ppo.stage.snapshot_schedule, from update 0 (the SFT policy) to the last."""
    from utils.ppo.stage import snapshot_schedule

    p = load_profile(path).stage_params("04_rloo")
    points = snapshot_schedule(p["updates"], p["kl_curve_points"])
    assert len(points) >= 4 and points[0] == 0 and points[-1] == p["updates"], f"{path.name}: snapshots at {points}"
    assert p["replies_per_prompt"] >= 2


@pytest.mark.parametrize("path", [p for p in PROFILES if not yaml.safe_load(p.read_text()).get("offline")], ids=lambda p: p.stem)
def test_every_online_profile_has_a_judge_from_outside_the_kit(path: Path):
    """Where the hub can be reached, OpenAssistant's released reward model judges too: trained on none of the kit's data."""
    judges = load_profile(path).stage_params("05_evaluate")["judges"]
    assert "judge" in judges and any("/" in j for j in judges), f"{path.name}: judges {judges}"


def test_a_profile_that_extends_another_holds_only_what_differs(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\noffline: true\nstages:\n  01_explore_trees: {seed: 3}\n"
                                        "  02_sft: {max_steps: 7, learning_rate: 0.01}\n")
    (tmp_path / "child.yaml").write_text("name: child\nextends: base.yaml\nstages:\n  02_sft: {max_steps: 9}\n"
                                         "  03_reward: {epochs: 2.0}\n")
    child = load_profile(tmp_path / "child.yaml")
    assert child.offline is True and child.parent.name == "base" and child.own == {"02_sft": {"max_steps": 9}, "03_reward": {"epochs": 2.0}}
    assert child.stages == {"01_explore_trees": {"seed": 3}, "02_sft": {"max_steps": 9, "learning_rate": 0.01},
                            "03_reward": {"epochs": 2.0}}
    assert child.stage_params("02_sft")["learning_rate"] == 0.01  # inherited, checked as the parent's would be
    rtx, t4 = load_profile("rtx-24gb"), load_profile("colab-t4")
    assert rtx.parent.name == "colab-t4" and rtx.stages["03_reward"]["max_length"] == t4.stages["03_reward"]["max_length"]
    assert sum(len(v) for v in rtx.own.values()) < sum(len(v) for v in t4.stages.values()) / 4


@pytest.mark.parametrize("text, message", [
    ("name: a\nextends: nowhere\nstages: {}\n", "a.yaml: extends 'nowhere': no profile 'nowhere'"),
    ("name: a\nextends: a.yaml\nstages: {}\n", r"extends 'a.yaml' makes a cycle \(a -> a\)"),
    ("name: a\nextends: [x]\nstages: {}\n", "extends must name a profile"),
])
def test_a_broken_extends_is_one_line_naming_the_file(tmp_path, text, message):
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_profile(tmp_path / "a.yaml")
