"""benchmarks/rl_sweep.py hands each RL stage exactly the parameters its Params declares (the profile's, the swept
values and no checkpoints), and reads the last fixed-set point back into its table."""

from __future__ import annotations

import pytest

import recipes.train
from benchmarks.rl_sweep import row, run_one
from utils.ppo.params import PPOParams
from utils.rloo.params import RLOOParams


@pytest.mark.parametrize("stage, params_class, name", [("04_ppo", PPOParams, "train_ppo"), ("04_rloo", RLOOParams, "train_rloo")])
def test_each_run_gets_its_stages_params_and_no_checkpoints(stage, params_class, name, tmp_path, monkeypatch):
    seen = {}

    def fake_train(p, out):
        seen["params"], seen["out"] = params_class(**p), out  # what the real flow does first
        assert out.parent == tmp_path and out.is_dir()
        point = {"kl": 1.0, "proxy_gain": 0.05, "proxy_gain_se": 0.01, "judge_gain": 0.04, "judge_gain_se": 0.01, "words": 42.0,
                 "ended_fraction": 0.5}
        return {"progress": [point], "seconds_per_update": 3.0, "kl_coef_last": 0.1, "beta": 0.05}

    monkeypatch.setattr(recipes.train, name, fake_train)
    result = run_one(stage, "tiny", tmp_path, {"learning_rate": 5e-4}, seed=1)
    params = seen["params"]
    assert params.learning_rate == 5e-4 and params.seed == 1
    assert getattr(params, "checkpoint_every", 0) == 0 and getattr(params, "save_steps", 0) == 0
    assert not seen["out"].exists()  # the sweep's folder is gone afterwards
    assert row({"learning_rate": 5e-4}, 1, result)["proxy gain"] == "+0.050 ± 0.010"
