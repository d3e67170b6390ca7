"""The GPU profile benchmark's stand-in models: with --random-weights, a profile's models are rebuilt from
SHAPES, so their sizes must be the published ones, or the measured memory would be another model's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from benchmarks.bench_gpu_profile import SHAPES, shape_config
from utils.profile import load_profile

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
