"""The GPU profile benchmark's stand-in models: with --random-weights, a profile's models are rebuilt from
SHAPES, so their sizes must be the published ones, or the measured memory would be another model's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from benchmarks.bench_gpu_profile import SHAPES, shape_config
from utils.pipeline.profile import load_profile

# Parameter counts as published (Pythia: Biderman et al. 2023, Table 1 / the model cards; DeBERTa-v3: the
# backbone with its 128k-token embedding matrix, as the hub's model cards count it).
PUBLISHED = {
    "EleutherAI/pythia-410m-deduped": 405_334_016,
    "EleutherAI/pythia-1.4b-deduped": 1_414_647_808,
    "EleutherAI/pythia-2.8b-deduped": 2_775_208_960,
    "microsoft/deberta-v3-base": 184e6,
    "microsoft/deberta-v3-large": 435e6,
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_have_the_published_sizes(name):
    config = shape_config(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = (AutoModelForCausalLM if config.model_type == "gpt_neox" else AutoModel).from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.005, f"{name}: {n:,} parameters"


@pytest.mark.parametrize("profile", ["colab-t4", "colab-t4-afternoon", "rtx-24gb", "laptop-8gb"])
def test_every_gpu_profile_model_has_a_shape(profile):
    p = load_profile(profile)
    assert {p.stage_params("02_sft")["base_model"], p.stage_params("03_reward")["base_model"]} <= set(SHAPES)


@pytest.mark.parametrize("profile", ["colab-t4", "laptop-8gb"])
def test_the_benchmark_shortens_every_stage_the_script_runs(profile):
    """Each stage `recipes.train` can run gets shortened with keys its notebook declares (a renamed parameter
    would make the benchmark fail on a GPU, after the earlier stages had spent their time)."""
    from types import SimpleNamespace

    from benchmarks.bench_gpu_profile import stage_overrides, table_rows
    from recipes.train import STAGES
    from utils.pipeline.notebook_params import declared_parameters
    from utils.pipeline.stages import notebook_path

    p = load_profile(profile)
    args = SimpleNamespace(sft_steps=2, reward_pairs=8, ppo_updates=1, dpo_pairs=8, rloo_updates=1, random_weights=True)
    models = {p.stage_params(s)["base_model"]: f"/models/{s}" for s in ("02_sft", "03_reward")}
    overrides = stage_overrides(p, args, models)
    assert set(overrides) == set(STAGES.values())
    for stage, settings in overrides.items():
        declared = declared_parameters(notebook_path(stage))
        assert {s.partition("=")[0] for s in settings} <= set(declared), stage
    metrics = {  # what each stage's metrics.json holds, as far as the table reads it
        "02_sft": {"quantization": "nf4", "tokens_per_second": 1000.0, "train_seconds": 4.0},
        "03_reward": {"pairs_train": 8, "train_seconds": 2.0},
        "04_ppo": {"updates": 1, "seconds_per_update": 3.0},
        "04_dpo": {"train_pairs": 8, "steps": 1, "train_seconds": 4.0},
        "04_rloo": {"updates": 1, "seconds_per_update": 5.0},
    }
    rows = table_rows(p, metrics, args)
    assert [r["stage"] for r in rows] == ["02 SFT", "03 reward", "04 PPO", "04 DPO", "04 RLOO"]
    assert rows[3]["speed"] == "2.00 pairs/s" and rows[4]["speed"] == "5.0 s/update"
