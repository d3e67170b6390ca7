"""What a student meets who opens a notebook before the stages it needs: one line, not a traceback wall."""

from __future__ import annotations

import json

import papermill
import pytest

from utils.stages import NOTEBOOKS_DIR, PPO


def test_a_stage_opened_before_its_inputs_exist_says_which_stage_to_run_in_one_line(tmp_path):
    run_dir, out = tmp_path / "tiny", tmp_path / "tiny" / PPO
    executed = tmp_path / "executed.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{PPO}.ipynb"), str(executed), cwd=str(NOTEBOOKS_DIR.parent),
                                   parameters={"run_dir": str(run_dir), "out_dir": str(out)}, progress_bar=False)
    errors = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1
    (line,) = errors[0]["traceback"]  # IPython shows the message alone (StageNotRun._render_traceback_)
    assert line == (f"StageNotRun: stage 02_sft has not run in {run_dir}: run notebooks/02_sft.ipynb first, "
                    f"or python -m recipes.run --profile tiny --from 02")
