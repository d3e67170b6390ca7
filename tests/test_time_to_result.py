"""The time-to-result estimates: the work each profile does, the rates it is charged, the cards' ratios, and the
sizing of the two profiles made to a time budget (an afternoon on a T4, an hour on a laptop GPU)."""

from __future__ import annotations

import pytest

from benchmarks.time_to_result import CARDS, H100, H100_RATES, PARAMS, TARGET_CARD, estimate, work


def test_capped_profiles_are_charged_their_caps():
    w = work("colab-t4-afternoon")
    assert (w["sft_steps"], w["reward_pairs"], w["ppo_updates"]) == (200, 2 * 1000, 20)  # proxy and judge, 1,000 pairs each
    assert w["rates_source"] == "measured (colab-t4)"


def test_an_unmeasured_model_takes_its_familys_rate_scaled_by_parameters():
    rates = work("laptop-8gb")["rates"]
    scale = PARAMS["EleutherAI/pythia-410m-deduped"] / H100_RATES["colab-t4"]["sft_params"]
    assert rates["sft_seconds_per_step"] == pytest.approx(1.72 * scale) and rates["ppo_seconds_per_update"] == pytest.approx(22.0 * scale)
    assert rates["reward_pairs_per_second"] == 12.0  # the same reward model as colab-t4, measured


def test_the_card_ratio_multiplies_every_stage():
    e = estimate("colab-t4", CARDS["T4"])
    assert e["bandwidth_ratio"] == pytest.approx(3350 / 320) and e["tensor_ratio"] == pytest.approx(989.4 / 65)
    for stage in ("02_sft", "03_reward", "04_ppo", "total"):
        assert e["estimate"][stage] == pytest.approx(e["h100"][stage] * e["bandwidth_ratio"])
    # The full-data profile: one epoch of the ~16,000 English threads of the vendored sample's scale, 16 a step.
    assert 900 < e["work"]["sft_steps"] < 1300


@pytest.mark.parametrize("profile, budget_minutes", [("colab-t4-afternoon", 3 * 60), ("laptop-8gb", 60)])
def test_budget_profiles_fit_their_budget_by_the_estimate(profile, budget_minutes):
    e = estimate(profile, CARDS[TARGET_CARD[profile]])
    assert 0.75 * budget_minutes < e["estimate"]["total"] <= budget_minutes, e["estimate"]


def test_h100_is_faster_than_every_target_card():
    assert all(card.bandwidth_gbs < H100.bandwidth_gbs and card.tensor_tflops < H100.tensor_tflops for card in CARDS.values())
