"""The papermill runner on toy notebooks: order, skip-if-unchanged by fingerprint, atomic stages, checkpoints
that belong to one fingerprint, a lock per run folder, parameters checked before anything runs, one-line
errors, and `--list` that tells the truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from recipes.run import StageError, expected_records, main, plan_stages, resolve_stage, run_profile, stage_states
from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.run_lock import LOCK_FILE, lock_holder
from utils.pipeline.stage_record import CHECKPOINT_MARK, claim_checkpoints, read_record


def make_notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


class Toy:
    """Two toy stages: 01 writes a number (and may sleep), 02 reads it from 01's finished folder and may fail."""

    def __init__(self, root: Path):
        self.root, self.nbs, self.runs = root, root / "notebooks", root / "runs"
        self.nbs.mkdir()
        make_notebook(self.nbs / "01_make.ipynb", 'run_dir = ""\nout_dir = ""\nvalue = 1\nrate = 0.5\nsleep = 0',
                      "import json, pathlib, time\ntime.sleep(sleep)\n"
                      "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'value': value, 'rate': rate}))")
        make_notebook(self.nbs / "02_use.ipynb", 'run_dir = ""\nout_dir = ""\nfail = False',
                      "import json, pathlib\nv = json.loads(pathlib.Path(run_dir, '01_make', 'metrics.json').read_text())['value']\n"
                      "if fail:\n    raise ValueError('bad value ' + str(v))\n"
                      "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'double': 2 * v}))")

    def profile_path(self, make: str = "", use: str = "") -> Path:
        path = self.root / "toy.yaml"
        path.write_text(f"name: toy\nstages:\n  01_make: {{{make}}}\n  02_use: {{{use}}}\n")
        return path

    def profile(self, make: str = "", use: str = ""):
        return load_profile(self.profile_path(make, use))

    def run(self, make: str = "", use: str = "", **kw) -> tuple[dict[str, str], list[str]]:
        logs: list[str] = []
        results = run_profile(self.profile(make, use), self.runs, notebooks_dir=self.nbs, progress=False, log=logs.append, **kw)
        return {r.stage: r.status for r in results}, logs

    def cli(self, *args: str, make: str = "", use: str = "") -> list[str]:
        return ["--profile", str(self.profile_path(make, use)), "--run-dir", str(self.runs), "--notebooks-dir", str(self.nbs), *args]


@pytest.fixture
def toy(tmp_path: Path) -> Toy:
    return Toy(tmp_path)


def test_runs_in_order_then_skips_unchanged(toy):
    status, _ = toy.run()
    assert status == {"01_make": "ran", "02_use": "ran"}
    assert json.loads((toy.runs / "02_use" / "metrics.json").read_text()) == {"double": 2}
    assert (toy.runs / "02_use" / "02_use.ipynb").exists()
    status, logs = toy.run()
    assert status == {"01_make": "skipped", "02_use": "skipped"}
    assert all("unchanged" in line for line in logs)


def test_changed_parameter_redoes_that_stage_and_later_ones_saying_why(toy):
    toy.run()
    status, logs = toy.run(make="value: 5")
    assert status == {"01_make": "ran", "02_use": "ran"}  # 02 depends on 01, so it is redone too
    assert json.loads((toy.runs / "02_use" / "metrics.json").read_text()) == {"double": 10}
    assert "(parameters value 1 -> 5)" in logs[0] and "(01_make changed)" in logs[2]


def test_listing_a_default_is_the_same_run_as_leaving_it_out(toy):
    """The fingerprint covers the effective parameters: the notebook's defaults with the profile's values."""
    toy.run(make="value: 1, rate: 0.5")
    status, _ = toy.run()
    assert status == {"01_make": "skipped", "02_use": "skipped"}
    status, _ = toy.run(make="rate: 1")  # an int for a float parameter: 1.0, a change
    assert status == {"01_make": "ran", "02_use": "ran"}
    assert json.loads((toy.runs / "01_make" / "metrics.json").read_text())["rate"] == 1.0
    assert toy.run(make="rate: 1.0")[0] == {"01_make": "skipped", "02_use": "skipped"}


def test_notebook_saved_with_outputs_is_the_same_code_and_edited_code_is_not(toy):
    toy.run()
    nb = nbformat.read(toy.nbs / "01_make.ipynb", 4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="hello\n")]  # as JupyterLab saves it after a run
    nb.cells[2].execution_count = 3
    nb.cells[0].source += "\nMore narrative."
    nbformat.write(nb, toy.nbs / "01_make.ipynb")
    assert toy.run()[0] == {"01_make": "skipped", "02_use": "skipped"}
    nb.cells[2].source += "\nprint('new')"
    nbformat.write(nb, toy.nbs / "01_make.ipynb")
    status, logs = toy.run()
    assert status == {"01_make": "ran", "02_use": "ran"} and "(notebook code changed)" in logs[0]


def test_failure_is_one_line_with_stage_and_cell_and_keeps_notebook(toy):
    toy.run()
    with pytest.raises(StageError) as e:
        toy.run(use="fail: true", force=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("stage 02_use failed in cell In [")
    assert "ValueError: bad value 1" in msg
    kept = toy.runs / "02_use.failed" / "02_use.ipynb"
    assert kept.exists() and str(kept) in msg
    # The cell named is the one that raised, as numbered in the kept executed notebook.
    count = int(msg.split("In [")[1].split("]")[0])
    cell = next(c for c in nbformat.read(kept, 4).cells if c.get("execution_count") == count)
    assert "raise ValueError" in cell.source
    # The earlier finished result is untouched by the failed attempt, and no temporary folder is left.
    assert json.loads((toy.runs / "02_use" / "metrics.json").read_text()) == {"double": 2}
    assert not list(toy.runs.glob(".*tmp"))


def test_only_and_from_pick_stages(toy):
    toy.run()
    status, _ = toy.run(only=["use"], force=True)
    assert status == {"02_use": "ran"}
    status, _ = toy.run(first="2", force=True)
    assert status == {"02_use": "ran"}


def test_a_stage_run_on_an_upstream_that_is_not_the_profiles_records_what_it_ran_on(toy):
    toy.run()
    status, logs = toy.run(make="value: 5", only=["use"])
    assert status == {"02_use": "skipped"}  # 01 on disk is what 02 was built on: nothing to redo
    assert "01_make: not this profile's (parameters value 1 -> 5)" in logs[0]
    status, _ = toy.run(make="value: 5")
    assert status == {"01_make": "ran", "02_use": "ran"}


# -------------------------------------------------------------------------------------------- --list


def test_list_tells_finished_changed_not_run_and_failed(toy, capsys):
    def listed(*args, **kw) -> dict[str, str]:
        assert main(toy.cli("--list", *args, **kw)) == 0
        return dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())

    assert listed() == {"01_make": "not run", "02_use": "not run"}
    toy.run()
    assert listed() == {"01_make": "finished", "02_use": "finished"}
    assert listed(make="value: 3") == {"01_make": "changed since it ran: parameters value 1 -> 3",
                                       "02_use": "changed since it ran: 01_make changed"}
    (toy.runs / "02_use" / "stage.json").unlink()  # as if it never finished
    with pytest.raises(StageError):
        toy.run(use="fail: true")
    assert listed(use="fail: true")["02_use"] == f"failed: {toy.runs / '02_use.failed' / '02_use.ipynb'}"


def test_a_record_from_an_older_runner_is_redone_saying_so(toy):
    toy.run()
    (toy.runs / "01_make" / "stage.json").write_text(json.dumps({"stage": "01_make", "fingerprint": "0123456789abcdef",
                                                                 "parameters": {"value": 1}}))
    status, logs = toy.run()
    assert status == {"01_make": "ran", "02_use": "skipped"}  # 01 comes back as it was: 02 stands
    assert "(recorded by an older version of the runner)" in logs[0]


# ----------------------------------------------------------------------------------------- checkpoints


def test_force_starts_fresh_deleting_the_stages_checkpoints(toy):
    toy.run()
    ckpt = toy.runs / "checkpoints" / "01_make"
    ckpt.mkdir(parents=True)
    (ckpt / "update-000002.pt").write_text("stale")
    status, logs = toy.run(force=True, only=["make"])
    assert status == {"01_make": "ran"}
    assert not (ckpt / "update-000002.pt").exists()
    assert any("removed the checkpoints" in line and "--force" in line for line in logs)


def test_force_never_resumes_nor_deletes_files_in_a_users_checkpoint_dir(tmp_path):
    """A checkpoint_dir named in a profile may hold the user's own files: --force stops in one line instead of
    resuming them (it used to leave them, and PPO with resume: true could pick them up)."""
    folder = tmp_path / "my-checkpoints"
    folder.mkdir()
    (folder / "update-000003.pt").write_text("someone's")
    with pytest.raises(ValueError, match=r"^--force: the checkpoint_dir .* holds files the runner did not write"):
        claim_checkpoints(folder, "fp", force=True, default_location=False)
    assert "did not write" in claim_checkpoints(folder, "fp", force=False, default_location=False)
    assert (folder / "update-000003.pt").read_text() == "someone's"


def test_checkpoints_resume_only_the_run_that_made_them(toy):
    """A killed attempt's checkpoints are kept for the next attempt of the same fingerprint; a stage redone
    because its parameters or an upstream stage changed starts without them (PPO resumed stale ones)."""
    toy.run()
    expected = expected_records(plan_stages(toy.profile(), toy.nbs))
    ckpt = toy.runs / "checkpoints" / "02_use"
    ckpt.mkdir(parents=True)
    (ckpt / CHECKPOINT_MARK).write_text(expected["02_use"].fingerprint)
    (ckpt / "update-000002.pt").write_text("made by this very configuration")
    toy.run(force=False)  # unchanged: skipped, checkpoints untouched
    assert (ckpt / "update-000002.pt").exists()
    toy.run(make="value: 5")  # 02 redone on another 01: its old checkpoints must not resume
    assert not (ckpt / "update-000002.pt").exists()
    # The runner marked the folder for the attempt that ran; a finished stage with nothing else in it leaves none.
    assert not ckpt.exists()

    # A killed attempt of the current configuration: its checkpoints are still there for the next attempt.
    (toy.runs / "02_use" / "stage.json").unlink()
    current = expected_records(plan_stages(toy.profile(make="value: 5"), toy.nbs))["02_use"].fingerprint
    ckpt.mkdir(parents=True)
    (ckpt / CHECKPOINT_MARK).write_text(current)
    (ckpt / "update-000001.pt").write_text("progress")
    assert toy.run(make="value: 5")[0]["02_use"] == "ran"
    assert (ckpt / "update-000001.pt").read_text() == "progress"


def micro_records_before_and_after(tmp_path, stage: str, line: str):
    """The micro profile's expected records, as it is and with ``line`` added under ``stage``."""
    micro = REPO_ROOT / "tests" / "profiles" / "micro.yaml"
    changed = tmp_path / "micro.yaml"
    changed.write_text(micro.read_text().replace(f"  {stage}:\n", f"  {stage}:\n    {line}\n"))
    return expected_records(plan_stages(load_profile(micro))), expected_records(plan_stages(load_profile(changed)))


def test_stage_04_fingerprint_changes_with_stage_03s_parameters(tmp_path):
    before, after = micro_records_before_and_after(tmp_path, "03_reward", "learning_rate: 0.002")
    same = [s for s in before if before[s].fingerprint == after[s].fingerprint]
    assert same == ["01_explore_trees", "02_sft"]
    assert after["04_ppo"].differences(before["04_ppo"]) == "03_reward changed"


def test_a_stage_01_parameter_redoes_stage_01_only(tmp_path):
    """Which tree 01 draws must not retrain SFT and the reward models (hours on a GPU profile)."""
    before, after = micro_records_before_and_after(tmp_path, "01_explore_trees", "example_tree_id: some-tree")
    assert [s for s in before if before[s].fingerprint != after[s].fingerprint] == ["01_explore_trees"]


# ------------------------------------------------------------------------------------------------ lock


@pytest.mark.slow  # several runner processes on the real notebooks
def test_two_runners_on_one_folder_the_second_is_refused_at_once(toy, capsys):
    first = subprocess.Popen([sys.executable, "-m", "recipes.run", *toy.cli(make="sleep: 8")], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while lock_holder(toy.runs) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert lock_holder(toy.runs), "the first runner never took the lock"
        assert main(toy.cli(make="sleep: 8")) == 1
        assert first.poll() is None, "the second runner waited instead of refusing at once"
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by pid" in err[0] and str(first.pid) in err[0], err
        out, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-2000:]
    assert "2 stage(s) ran" in out
    assert lock_holder(toy.runs) is None


def test_a_lock_left_by_a_dead_process_is_taken_over(toy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    toy.runs.mkdir()
    (toy.runs / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "command": "python -m recipes.run"}))
    status, logs = toy.run()
    assert status == {"01_make": "ran", "02_use": "ran"}
    assert logs[0].startswith(f"took over the lock of pid {dead.pid}")


# ---------------------------------------------------------------------------- parameters checked up front


def test_undeclared_key_names_profile_stage_and_key(toy):
    with pytest.raises(StageError, match=r"toy.yaml: stage 01_make: valeu: not declared in 01_make.ipynb"):
        toy.run(make="valeu: 3")


@pytest.mark.parametrize("make, expected", [
    ("value: six", "stage 01_make: value: expected an int (the notebook's default is 1), got 'six' (a string)"),
    ("value: true", "value: expected an int"),
    ("value: null", "value: null is not allowed"),
    ("rate: '0.1'", "rate: expected a number"),
    ("run_dir: x", "run_dir: set by the runner, not by a profile"),
])
def test_wrong_types_fail_before_any_stage_runs_and_leave_no_run_folder(toy, capsys, make, expected):
    assert main(toy.cli(make=make)) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err and str(toy.profile_path()) in err, err
    assert not toy.runs.exists()


def test_micro_profile_with_max_steps_six_fails_before_any_stage_in_one_line(tmp_path, capsys):
    profile = tmp_path / "micro.yaml"
    text = (REPO_ROOT / "tests" / "profiles" / "micro.yaml").read_text()
    profile.write_text(text.replace("    max_steps: 6\n", "    max_steps: six\n"))
    started = time.time()
    assert main(["--profile", str(profile), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stage 02_sft: max_steps: expected an int" in err and "'six'" in err, err
    assert not (tmp_path / "run").exists()
    assert time.time() - started < 30  # refused while reading the profile, not after stage 01 ran


@pytest.mark.parametrize("stage, line, expected", [
    ("04_ppo", "on_error: skipp", "stage 04_ppo: on_error: 'skipp' is not one of raise, skip"),  # a misspelt choice
    ("03_reward", "hh_path: data/no-such-file.jsonl.gz", "stage 03_reward: hh_path: data/no-such-file.jsonl.gz does not exist"),
])
def test_a_bad_value_is_caught_before_any_stage_runs(tmp_path, capsys, stage, line, expected):
    profile = tmp_path / "micro.yaml"
    text = (REPO_ROOT / "tests" / "profiles" / "micro.yaml").read_text()
    profile.write_text(text.replace(f"  {stage}:\n", f"  {stage}:\n    {line}\n"))
    assert main(["--profile", str(profile), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_duplicate_yaml_keys_are_rejected_with_file_and_line(toy, capsys):
    path = toy.root / "dup.yaml"
    path.write_text("name: dup\nstages:\n  01_make:\n    value: 2\n    value: 3\n  02_use: {}\n")
    assert main(["--profile", str(path), "--run-dir", str(toy.runs), "--notebooks-dir", str(toy.nbs)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}:5: invalid YAML: key 'value' appears twice (lines 4 and 5)"
    # A key from a merged anchor (<<: *data) may be overridden: that is what anchors are for.
    path.write_text("name: ok\nshared:\n  d: &d {value: 2}\nstages:\n  01_make:\n    <<: *d\n    value: 3\n  02_use:\n")
    assert load_profile(path).overrides("01_make") == {"value": 3}


@pytest.mark.parametrize("case", ["run-dir is a file", "profile is a folder", "unknown option", "missing value"])
def test_bad_command_lines_are_one_line_without_traceback(toy, case):
    toy.runs.parent.mkdir(exist_ok=True)
    args = {
        "run-dir is a file": toy.cli()[:3] + [str(toy.profile_path())] + toy.cli()[4:],
        "profile is a folder": ["--profile", str(toy.nbs), "--run-dir", str(toy.runs)],
        "unknown option": toy.cli("--frm", "02"),
        "missing value": toy.cli("--from"),
    }[case]
    proc = subprocess.run([sys.executable, "-m", "recipes.run", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and not toy.runs.exists()


def test_set_on_the_command_line_overrides_one_stage_parameter(toy, capsys):
    assert main(toy.cli("--set", "01_make.value=4")) == 0
    assert json.loads((toy.runs / "02_use" / "metrics.json").read_text()) == {"double": 8}
    assert toy.profile().with_setting("01_make.rate=0.25").overrides("01_make") == {"rate": 0.25}
    for bad, says in (("01_make.value", "write STAGE.KEY=VALUE"), ("value=3", "write STAGE.KEY=VALUE"),
                      ("09_none.value=3", "has no stage '09_none'"), ("01_make.nope=3", "nope")):
        assert main(toy.cli("--set", bad)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and "\n" not in err, err


def test_cli_missing_profile_is_one_line(capsys):
    assert main(["--profile", "no-such-profile"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no profile 'no-such-profile'") and "\n" not in err


# ------------------------------------------------------------------------------ the rules for notebooks


def test_a_parameter_that_is_not_a_literal_names_the_notebook_and_the_line(toy):
    make_notebook(toy.nbs / "01_make.ipynb", 'run_dir = ""\nout_dir = ""\n# the window\nvalue = 2 * 192', "pass")
    with pytest.raises(StageError) as e:
        toy.run()
    msg = str(e.value)
    assert msg.startswith(f"{toy.nbs / '01_make.ipynb'}, parameters cell line 4: value = 2 * 192 is not a literal"), msg
    assert "\n" not in msg


def test_every_notebook_declares_run_dir_and_out_dir(toy):
    make_notebook(toy.nbs / "01_make.ipynb", 'run_dir = ""\nvalue = 1', "pass")
    with pytest.raises(StageError, match=r"01_make.ipynb, parameters cell: declares no out_dir"):
        toy.run()


def test_a_stage_is_named_as_its_notebook(toy):
    (toy.root / "bad.yaml").write_text("name: bad\nstages:\n  make: {}\n")
    with pytest.raises(StageError, match=r"stage 'make': a stage is named NN_name, as its notebook"):
        run_profile(load_profile(toy.root / "bad.yaml"), toy.runs, notebooks_dir=toy.nbs, log=lambda *_: None)


def test_resolve_stage_names():
    stages = ["01_explore_trees", "02_sft", "03_reward"]
    assert resolve_stage("sft", stages) == "02_sft"
    assert resolve_stage("3", stages) == "03_reward"
    assert resolve_stage("01_explore_trees", stages) == "01_explore_trees"
    with pytest.raises(StageError, match="no stage 'ppo'"):
        resolve_stage("ppo", stages)


def test_notebook_defaults_read_the_parameters_cell_as_papermill_does():
    """recipes.train reads parameters without papermill; it must see what papermill injects into."""
    import ast

    import papermill

    from recipes.run import NOTEBOOKS_DIR, notebook_defaults

    for notebook in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        expected = {k: ast.literal_eval(p["default"]) for k, p in papermill.inspect_notebook(str(notebook)).items()}
        assert notebook_defaults(notebook) == expected, notebook.name


def test_list_on_the_real_notebooks_names_every_stage(tmp_path):
    states = stage_states(load_profile("tiny"), tmp_path / "nothing")
    assert states == [(s, "not run") for s in ["01_explore_trees", "02_sft", "03_reward", "04_dpo", "04_ppo", "04_rloo",
                                                "05_evaluate"]]
    assert not (tmp_path / "nothing").exists()
    assert read_record(tmp_path / "nothing" / "02_sft") is None


# ------------------------------------------------------------------------- stages that share a number


class Branches(Toy):
    """01 makes a number; 02_a and 02_b, alternatives, each read it; 03_end reads both (as 04_dpo, 04_ppo and 05)."""

    def __init__(self, root: Path):
        self.root, self.nbs, self.runs = root, root / "notebooks", root / "runs"
        self.nbs.mkdir()
        make_notebook(self.nbs / "01_make.ipynb", 'run_dir = ""\nout_dir = ""\nvalue = 1',
                      "import json, pathlib\npathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'value': value}))")
        for name in ("02_a", "02_b"):
            make_notebook(self.nbs / f"{name}.ipynb", 'run_dir = ""\nout_dir = ""\nfactor = 2',
                          "import json, pathlib\nv = json.loads(pathlib.Path(run_dir, '01_make', 'metrics.json').read_text())['value']\n"
                          "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'v': factor * v}))")
        make_notebook(self.nbs / "03_end.ipynb", 'run_dir = ""\nout_dir = ""',
                      "import json, pathlib\nread = lambda s: json.loads(pathlib.Path(run_dir, s, 'metrics.json').read_text())['v']\n"
                      "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'sum': read('02_a') + read('02_b')}))")

    def profile_path(self, make: str = "", a: str = "", b: str = "") -> Path:
        path = self.root / "branches.yaml"
        path.write_text(f"name: branches\nstages:\n  01_make: {{{make}}}\n  02_a: {{{a}}}\n  02_b: {{{b}}}\n  03_end: {{}}\n")
        return path

    def run(self, make: str = "", a: str = "", b: str = "", **kw) -> tuple[dict[str, str], list[str]]:
        logs: list[str] = []
        profile = load_profile(self.profile_path(make, a, b))
        results = run_profile(profile, self.runs, notebooks_dir=self.nbs, progress=False, log=logs.append, **kw)
        return {r.stage: r.status for r in results}, logs


@pytest.mark.slow  # several runner processes on the real notebooks
def test_alternative_stages_depend_on_what_came_before_not_on_each_other(tmp_path):
    branches = Branches(tmp_path)
    assert branches.run()[0] == dict.fromkeys(["01_make", "02_a", "02_b", "03_end"], "ran")
    assert json.loads((branches.runs / "03_end" / "metrics.json").read_text()) == {"sum": 4}
    assert set(read_record(branches.runs / "02_b").upstream) == {"01_make"}
    assert set(read_record(branches.runs / "03_end").upstream) == {"01_make", "02_a", "02_b"}
    status, logs = branches.run(a="factor: 3")  # a change in one alternative redoes it and what reads it, not the other
    assert status == {"01_make": "skipped", "02_a": "ran", "02_b": "skipped", "03_end": "ran"}
    assert any("03_end: running" in line and "(02_a changed)" in line for line in logs), logs
    # --from an alternative runs it and what depends on it; its number alone names two stages and says so
    assert branches.run(a="factor: 3", first="02_b", force=True)[0] == {"02_b": "ran", "03_end": "ran"}
    with pytest.raises(StageError, match=r"stage '02' is ambiguous: 02_a or 02_b \(name one, e.g. 'a'\)"):
        branches.run(first="02")
    with pytest.raises(StageError, match="ambiguous"):
        branches.run(only=["2"])


def test_list_of_alternative_stages_says_which_changed(tmp_path, capsys):
    branches = Branches(tmp_path)
    branches.run()
    cli = ["--profile", str(branches.profile_path(b="factor: 5")), "--run-dir", str(branches.runs), "--notebooks-dir", str(branches.nbs)]
    assert main(cli + ["--list"]) == 0
    listed = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert listed == {"01_make": "finished", "02_a": "finished", "02_b": "changed since it ran: parameters factor 2 -> 5",
                      "03_end": "changed since it ran: 02_b changed"}
    assert main(cli + ["--from", "02"]) == 1
    assert capsys.readouterr().err.strip() == "error: stage '02' is ambiguous: 02_a or 02_b (name one, e.g. 'a')"


def test_the_kits_stage_graph():
    from utils.pipeline.stages import DPO, EVALUATE, EXPLORE, PPO, REWARD, RLOO, SFT, STAGES, downstream, upstream

    assert upstream(PPO) == upstream(DPO) == upstream(RLOO) == [SFT, REWARD]  # no alternative reads another
    assert upstream(EVALUATE) == [SFT, REWARD, DPO, PPO, RLOO]
    assert downstream(EXPLORE) == [EXPLORE]  # SFT and the reward models read the data, not 01's tables
    assert downstream(PPO) == [PPO, EVALUATE] and downstream(DPO) == [DPO, EVALUATE] and downstream(RLOO) == [RLOO, EVALUATE]
    assert downstream(REWARD) == [REWARD, DPO, PPO, RLOO, EVALUATE]
    assert downstream(SFT) == [SFT, DPO, PPO, RLOO, EVALUATE]  # a new SFT model leaves the reward models as they are
    # A profile without DPO: PPO, RLOO and the evaluation keep the dependencies they had before DPO existed.
    without = [s for s in STAGES if s != DPO]
    assert upstream(EVALUATE, without) == [SFT, REWARD, PPO, RLOO]
    assert resolve_stage("ppo", list(STAGES)) == PPO and resolve_stage("04_dpo", list(STAGES)) == DPO
    assert resolve_stage("rloo", list(STAGES)) == RLOO
    with pytest.raises(StageError, match="ambiguous: 04_dpo or 04_ppo or 04_rloo"):
        resolve_stage("4", list(STAGES))


def test_a_dpo_setting_changes_dpo_and_evaluation_fingerprints_only(tmp_path):
    import yaml

    from utils.pipeline.profile import PROFILES_DIR

    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    raw["stages"]["04_dpo"] = {"beta": 0.2}
    changed = tmp_path / "tiny-beta.yaml"
    changed.write_text(yaml.safe_dump(raw))
    before = expected_records(plan_stages(load_profile("tiny")))
    after = expected_records(plan_stages(load_profile(changed)))
    differ = sorted(s for s in before if before[s].fingerprint != after[s].fingerprint)
    assert differ == ["04_dpo", "05_evaluate"]


@pytest.mark.parametrize("case", ["profile is a folder", "duplicate key", "--set value is not YAML", "--set without ="])
def test_recipes_train_bad_command_lines_are_one_line(tmp_path, capsys, case):
    from recipes.train import main as train_main

    dup = tmp_path / "dup.yaml"
    dup.write_text("name: dup\nstages:\n  03_reward:\n    seed: 1\n    seed: 2\n")
    args, expected = {
        "profile is a folder": (["--profile", str(tmp_path)], f"error: {tmp_path} is a folder, not a profile"),
        "duplicate key": (["--profile", str(dup)], f"error: {dup}:5: invalid YAML: key 'seed' appears twice (lines 4 and 5)"),
        "--set value is not YAML": (["--set", "lang=[en"], "error: --set 'lang=[en': the value is not YAML"),
        "--set without =": (["--set", "lang"], "error: --set 'lang': expected KEY=VALUE"),
    }[case]
    assert train_main(["reward", *args, "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_on_error_skip_on_the_command_line_reaches_every_stage_that_reads_data(capsys):
    """`recipes.run --on-error skip`: every stage reads with on_error skip, and its fingerprint says so (its results may differ)."""
    micro = load_profile(REPO_ROOT / "tests" / "profiles" / "micro.yaml")
    strict, skipping = expected_records(plan_stages(micro)), expected_records(plan_stages(micro.with_everywhere("on_error", "skip")))
    readers = {s for s, r in strict.items() if "on_error" in r.parameters}
    assert readers == set(strict) - {"04_dpo"}  # DPO reads no file itself: it rebuilds stage 03's pairs as 03 read them
    assert {s: skipping[s].parameters["on_error"] for s in readers} == {s: "skip" for s in readers}
    assert all(strict[s].fingerprint != skipping[s].fingerprint for s in strict)  # DPO's too, through stage 03's
    with pytest.raises(SystemExit) as e:
        main(["--profile", "tiny", "--on-error", "skipp", "--list"])
    assert e.value.code == 2 and "invalid choice: 'skipp'" in capsys.readouterr().err
