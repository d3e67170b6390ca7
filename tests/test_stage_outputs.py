"""A stage records the same things however it runs: notebook (through the runner) or script (recipes.train).

Both call the stage's one ``stage_metrics`` (utils.sft, utils.reward.stage, utils.ppo, utils.dpo); this runs the
four training stages as scripts, each on the micro run's upstream stages, and compares the keys with the notebooks'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from utils.pipeline.profile import REPO_ROOT
from utils.pipeline.stages import DPO, PPO, REWARD, SFT

MICRO = REPO_ROOT / "tests" / "profiles" / "micro.yaml"
SCRIPT_ONLY = {"script", "parameters", "gpu_peak_reserved_mb"}  # what only a script run adds


def test_scripts_and_notebooks_record_the_same_keys(micro_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, stage, upstream in (("sft", SFT, ()), ("reward", REWARD, ()), ("ppo", PPO, (SFT, REWARD)), ("dpo", DPO, (SFT, REWARD))):
        run_dir = tmp_path / name
        run_dir.mkdir()
        for up in upstream:  # the notebooks' upstream stages, so the script trains on what the notebook did
            (run_dir / up).symlink_to(micro_run / up)
        proc = subprocess.run([sys.executable, "-m", "recipes.train", name, "--profile", str(MICRO), "--run-dir", str(run_dir)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        script = json.loads((run_dir / stage / "metrics.json").read_text())
        notebook = json.loads((micro_run / stage / "metrics.json").read_text())
        assert set(script) - SCRIPT_ONLY == set(notebook), f"{stage}: only script {sorted(set(script) - SCRIPT_ONLY - set(notebook))}, " \
                                                           f"only notebook {sorted(set(notebook) - set(script))}"
        assert script["processes"] == notebook["processes"] == 1
