"""What a student meets who opens a notebook before the stages it needs: one line, not a traceback wall."""

from __future__ import annotations

import json

import papermill
import pytest

from utils.stages import DPO, NOTEBOOKS_DIR, PPO


@pytest.mark.parametrize("stage, missing, before", [(PPO, "02_sft", ["01_explore_trees"]), (DPO, "03_reward", [])])
def test_a_stage_opened_before_its_inputs_exist_says_which_stages_to_run_in_one_line(tmp_path, stage, missing, before):
    """Every stage still to run is named, in order, and the command runs exactly those (``--only``)."""
    run_dir, out = tmp_path / "tiny", tmp_path / "tiny" / stage
    if stage == DPO:  # 01 and 02 have run (their metrics exist), 03 has not: only 03 is to run
        for done in ("01_explore_trees", "02_sft"):
            (run_dir / done).mkdir(parents=True)
            (run_dir / done / "metrics.json").write_text("{}")
    executed = tmp_path / "executed.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{stage}.ipynb"), str(executed), cwd=str(NOTEBOOKS_DIR.parent),
                                   parameters={"run_dir": str(run_dir), "out_dir": str(out)}, progress_bar=False)
    errors = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1
    (line,) = errors[0]["traceback"]  # IPython shows the message alone (StageNotRun._render_traceback_)
    todo = before + [missing]
    notebooks = ", ".join(f"notebooks/{s}.ipynb" for s in todo)
    order = " (in this order)" if before else ""
    assert line == (f"StageNotRun: stage {missing} has not run in {run_dir}: run {notebooks} first{order}, "
                    f"or python -m recipes.run --profile tiny --only {' '.join(todo)}")
