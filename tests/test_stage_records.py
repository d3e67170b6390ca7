"""One record for every way a stage runs: the runner, `python -m recipes.train` and a notebook run by hand all
write the same `stage.json` with the same fingerprint, so the runner knows what the others did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import papermill
import pytest

from recipes.run import expected_records, plan_stages, run_profile, stage_states
from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.run_lock import RunLock
from utils.pipeline.stage_record import read_record
from utils.pipeline.stages import EXPLORE, PPO, REWARD, SFT, notebook_path

MICRO = REPO_ROOT / "tests" / "profiles" / "micro.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_a_notebook_run_by_hand_is_a_finished_stage_for_the_runner(tmp_path):
    """As in JupyterLab: the notebook with its own defaults (the tiny profile), only the folders moved."""
    run_dir = tmp_path / "tiny"
    papermill.execute_notebook(
        str(notebook_path(EXPLORE)), str(tmp_path / "executed.ipynb"),
        parameters={"run_dir": str(run_dir), "out_dir": str(run_dir / EXPLORE)},
        cwd=str(REPO_ROOT), progress_bar=False, kernel_name="python3",
    )  # fmt: skip
    record = read_record(run_dir / EXPLORE)
    assert record is not None and record.how == "notebook"
    tiny = load_profile("tiny")
    assert record.fingerprint == expected_records(plan_stages(tiny))[EXPLORE].fingerprint
    assert dict(stage_states(tiny, run_dir))[EXPLORE] == "finished (run by hand in its notebook)"
    logs: list[str] = []
    results = run_profile(tiny, run_dir, only=[EXPLORE], progress=False, log=logs.append)
    assert [(r.stage, r.status) for r in results] == [(EXPLORE, "skipped")], logs
    # Run again by hand and stop half way (a file that is not there): the old record no longer vouches for the folder.
    with pytest.raises(papermill.PapermillExecutionError, match="no_such_file"):
        papermill.execute_notebook(
            str(notebook_path(EXPLORE)), str(tmp_path / "stopped.ipynb"),
            parameters={"run_dir": str(run_dir), "out_dir": str(run_dir / EXPLORE), "train_paths": ["data/no_such_file.jsonl"]},
            cwd=str(REPO_ROOT), progress_bar=False, kernel_name="python3",
        )  # fmt: skip
    assert read_record(run_dir / EXPLORE) is None and not (run_dir / EXPLORE / "metrics.json").exists()
    assert dict(stage_states(tiny, run_dir))[EXPLORE] == "not run"


def test_a_script_run_is_recorded_and_the_runner_sees_it(micro_run, tmp_path):
    """`recipes.train sft --set max_steps=2` into a finished run: the runner sees 02 changed (it used to skip it)."""
    run_dir = tmp_path / "micro"
    shutil.copytree(micro_run, run_dir, symlinks=True)
    micro = load_profile(MICRO)
    assert {state for _, state in stage_states(micro, run_dir)} == {"finished"}
    proc = subprocess.run([sys.executable, "-m", "recipes.train", "sft", "--profile", str(MICRO), "--run-dir", str(run_dir),
                           "--set", "max_steps=2"], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_record(run_dir / SFT)
    assert record.how == "script" and record.parameters["max_steps"] == 2
    states = dict(stage_states(micro, run_dir))
    assert states[EXPLORE] == "finished"
    assert states[SFT] == "changed since it ran: parameters max_steps 2 -> 6"
    # What a full run does: 02 again with the profile's settings, the ones 03-05 were built on; they stand.
    assert states[PPO] == "finished (on this profile's 02_sft, which is redone first)"
    assert states[REWARD] == "finished"  # the reward models read text, not the SFT model
    assert json.loads((run_dir / SFT / "metrics.json").read_text())["parameters"]["max_steps"] == 2
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "checkpoints" / SFT).exists()


def test_a_script_is_refused_a_folder_in_use_and_bad_settings_in_one_line(tmp_path):
    with RunLock(tmp_path / "run", command="python -m recipes.run --profile micro"):
        proc = subprocess.run([sys.executable, "-m", "recipes.train", "reward", "--profile", str(MICRO), "--run-dir",
                               str(tmp_path / "run")], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and f"is in use by pid {os.getpid()}" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run" / REWARD).exists()

    proc = subprocess.run([sys.executable, "-m", "recipes.train", "sft", "--profile", str(MICRO), "--run-dir", str(tmp_path / "x"),
                           "--set", "max_steps=six"], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "stage 02_sft (with --set): max_steps: expected an int" in lines[0]
    assert not (tmp_path / "x").exists()


def test_changing_a_reward_parameter_retrains_ppo_from_its_first_update(micro_run, tmp_path):
    """The stale-PPO defect: 04 used to resume its last checkpoint (same PPO settings and prompts), run zero
    updates and hand back the old adapter. Its fingerprint now covers 03, and its checkpoints belong to one."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "micro"
    shutil.copytree(micro_run, run_dir, symlinks=True)
    assert list((run_dir / "checkpoints" / PPO).glob("update-*.pt")), "the first run left a PPO checkpoint to resume"
    changed = tmp_path / "micro.yaml"
    changed.write_text(MICRO.read_text().replace("  03_reward:\n", "  03_reward:\n    learning_rate: 0.002\n"))
    logs: list[str] = []
    results = run_profile(load_profile(changed), run_dir, only=[REWARD, PPO], progress=False, log=logs.append)
    assert [(r.stage, r.status) for r in results] == [(REWARD, "ran"), (PPO, "ran")], logs
    assert any("removed the checkpoints" in line and PPO in line for line in logs), logs
    executed = (run_dir / PPO / f"{PPO}.ipynb").read_text()
    assert "resumed from" not in executed
    (old,), (new,) = (sorted((d / PPO / "adapter").glob("*.safetensors")) for d in (micro_run, run_dir))
    a, b = load_file(old), load_file(new)
    assert any(not (a[k] == b[k]).all() for k in a), "PPO's adapter is the first run's"
    assert json.loads((run_dir / PPO / "metrics.json").read_text())["updates"] == load_profile(MICRO).overrides(PPO)["updates"]
