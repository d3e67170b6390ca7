"""What a student meets who opens a notebook before the stages it needs: one line, not a traceback wall."""

from __future__ import annotations

import json

import papermill
import pytest

from utils.pipeline.stages import DPO, EXPLORE, NOTEBOOKS_DIR, PPO, REWARD, SFT


@pytest.mark.parametrize("stage, done, todo", [(PPO, [], [SFT, REWARD]), (DPO, [EXPLORE, SFT], [REWARD])])
def test_a_stage_opened_before_its_inputs_exist_says_which_stages_to_run_in_one_line(tmp_path, stage, done, todo):
    """Every stage still to run is named, in order, and the command runs exactly those (``--only``)."""
    run_dir, out = tmp_path / "tiny", tmp_path / "tiny" / stage
    for finished in done:
        (run_dir / finished).mkdir(parents=True)
        (run_dir / finished / "metrics.json").write_text("{}")
    executed = tmp_path / "executed.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{stage}.ipynb"), str(executed), cwd=str(NOTEBOOKS_DIR.parent),
                                   parameters={"run_dir": str(run_dir), "out_dir": str(out)}, progress_bar=False)
    errors = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1
    (line,) = errors[0]["traceback"]  # IPython shows the message alone (StageNotRun._render_traceback_)
    notebooks = ", ".join(f"notebooks/{s}.ipynb" for s in todo)
    order = " (in this order)" if len(todo) > 1 else ""
    assert line == (f"StageNotRun: stage {stage} needs {' and '.join(todo)}: not run in {run_dir}: run {notebooks} first{order}, "
                    f"or python -m recipes.run --profile tiny --only {' '.join(todo)}")
    assert not out.exists()  # nothing was written for a stage that could not start
