"""The papermill runner on toy notebooks: order, skip-if-unchanged, atomic stages, one-line failures."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from recipes.run import StageError, main, resolve_stage, run_profile
from utils.profile import load_profile


def make_notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def toy(tmp_path: Path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    # Stage 01 writes a number; stage 02 reads it from stage 01's finished folder and can be made to fail.
    make_notebook(nbs / "01_make.ipynb", 'run_dir = ""\nout_dir = ""\nvalue = 1',
                  "import json, pathlib\npathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'value': value}))")
    make_notebook(nbs / "02_use.ipynb", 'run_dir = ""\nout_dir = ""\nfail = False',
                  "import json, pathlib\nv = json.loads(pathlib.Path(run_dir, '01_make', 'metrics.json').read_text())['value']\n"
                  "if fail:\n    raise ValueError('bad value ' + str(v))\n"
                  "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'double': 2 * v}))")

    def profile(value=1, fail=False, extra=""):
        path = tmp_path / "toy.yaml"
        path.write_text(f"name: toy\nstages:\n  01_make: {{value: {value}{extra}}}\n  02_use: {{fail: {str(fail).lower()}}}\n")
        return load_profile(path)

    return nbs, tmp_path / "runs", profile


def run(toy_fixture, **kw):
    nbs, runs, profile = toy_fixture
    logs: list[str] = []
    results = run_profile(profile(**{k: kw.pop(k) for k in ("value", "fail", "extra") if k in kw}),
                          runs, notebooks_dir=nbs, progress=False, log=logs.append, **kw)
    return {r.stage: r.status for r in results}, logs


def test_runs_in_order_then_skips_unchanged(toy):
    status, _ = run(toy)
    assert status == {"01_make": "ran", "02_use": "ran"}
    runs = toy[1]
    assert json.loads((runs / "02_use" / "metrics.json").read_text()) == {"double": 2}
    assert (runs / "02_use" / "02_use.ipynb").exists()
    status, logs = run(toy)
    assert status == {"01_make": "skipped", "02_use": "skipped"}
    assert all("unchanged" in line for line in logs)


def test_changed_parameter_redoes_that_stage_and_later_ones(toy):
    run(toy)
    status, _ = run(toy, value=5)
    assert status == {"01_make": "ran", "02_use": "ran"}  # 02 depends on 01, so it is redone too
    assert json.loads((toy[1] / "02_use" / "metrics.json").read_text()) == {"double": 10}


def test_failure_is_one_line_with_stage_and_cell_and_keeps_notebook(toy):
    run(toy)
    with pytest.raises(StageError) as e:
        run(toy, fail=True, force=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("stage 02_use failed in cell In [")
    assert "ValueError: bad value 1" in msg
    kept = toy[1] / "02_use.failed" / "02_use.ipynb"
    assert kept.exists() and str(kept) in msg
    # The cell named is the one that raised, as numbered in the kept executed notebook.
    count = int(msg.split("In [")[1].split("]")[0])
    cell = next(c for c in nbformat.read(kept, 4).cells if c.get("execution_count") == count)
    assert "raise ValueError" in cell.source
    # The earlier finished result is untouched by the failed attempt, and no temporary folder is left.
    assert json.loads((toy[1] / "02_use" / "metrics.json").read_text()) == {"double": 2}
    assert not list(toy[1].glob(".*tmp"))


def test_only_and_from_pick_stages(toy):
    run(toy)
    status, _ = run(toy, only=["use"], force=True)
    assert status == {"02_use": "ran"}
    status, _ = run(toy, first="2", force=True)
    assert status == {"02_use": "ran"}


def test_unknown_profile_key_names_stage_and_key(toy):
    with pytest.raises(StageError, match=r"stage 01_make sets valeu, which 01_make.ipynb does not declare"):
        run(toy, extra=", valeu: 3")


def test_resolve_stage_names():
    stages = ["01_explore_trees", "02_sft", "03_reward"]
    assert resolve_stage("sft", stages) == "02_sft"
    assert resolve_stage("3", stages) == "03_reward"
    assert resolve_stage("01_explore_trees", stages) == "01_explore_trees"
    with pytest.raises(StageError, match="no stage 'ppo'"):
        resolve_stage("ppo", stages)


def test_cli_missing_profile_is_one_line(capsys):
    assert main(["--profile", "no-such-profile"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no profile 'no-such-profile'") and "\n" not in err


def test_notebook_defaults_read_the_parameters_cell_as_papermill_does():
    """recipes.train reads parameters without papermill; it must see what papermill injects into."""
    import ast

    import papermill

    from recipes.run import NOTEBOOKS_DIR, notebook_defaults

    for notebook in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        expected = {k: ast.literal_eval(p["default"]) for k, p in papermill.inspect_notebook(str(notebook)).items()}
        assert notebook_defaults(notebook) == expected, notebook.name
