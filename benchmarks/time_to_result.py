"""How long each profile's pipeline takes: measured on the CPU profiles, estimated for the GPU ones.

    python -m benchmarks.time_to_result            # table to benchmarks/results/time-to-result.md
    python -m benchmarks.time_to_result --json

**GPU profiles: estimates.** No GPU profile was run end to end; what was measured is the speed of each training
stage on an H100 capped to the target card's memory (``bench_gpu_profile``, README "GPU profiles, measured"):
seconds per SFT step, reward pairs per second, seconds per PPO update (``H100_RATES``, from
``benchmarks/results/colab-t4-gpu.md`` and ``rtx-24gb-gpu.md``). The estimate multiplies

1. the **work** of the profile: SFT optimizer steps (``max_steps``, or the epochs over the English OASST1
   threads), reward pairs per reward model (``max_train_pairs``, or every pair) times the number of reward models
   (2 with a judge), PPO updates. Without ``max_*`` caps the counts of full English OASST1 are taken as the
   vendored validation sample's times ``OASST1_SCALE`` (the hub dataset's 88,838 messages over its validation
   split's 4,401), since the full data cannot be read offline;
2. by the **H100 rate** of the stage's settings. A model not measured there (Pythia-410M) takes its family's
   measured rate scaled by parameter count (training compute grows with parameters at fixed tokens);
3. by the **card ratio**: H100 SXM over the target card, by published memory bandwidth (the estimate) and by
   published dense fp16/bf16 tensor throughput (the pessimistic end; ``CARDS``). The H100 runs reached a few
   percent of its tensor peak (QLoRA's 4-bit dequantization and small-batch decoding read memory more than they
   compute), so bandwidth is the better guide; the true ratio may be lower still where per-kernel overheads,
   which do not depend on the card, dominate.

Only the training loops are covered: held-out evaluations inside stages 02-04 and stage 05 were not measured on a
GPU and come on top. Every figure is an estimate until a run on the card replaces it.

**CPU profiles: measured.** ``tiny`` and ``smol`` take the seconds of a finished run (each stage's
``stage.json``, ``benchmarks.run.stage_rows``): ``--cpu-run tiny=runs/tiny`` tabulates one, on the machine it ran
on (say which, and whether it was quiet).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.stages import PPO, REWARD, SFT

OFFLINE_TRAIN_PATHS = ["data/oasst1_en_validation_messages.jsonl"]
OASST1_SCALE = 88_838 / 4_401  # OpenAssistant/oasst1 on the hub: all messages over its validation split's


@dataclass(frozen=True)
class Card:
    name: str
    tensor_tflops: float  # dense fp16/bf16 tensor throughput (fp32 accumulate), as published
    bandwidth_gbs: float  # memory bandwidth, as published


H100 = Card("H100 SXM 80GB", 989.4, 3350)
CARDS = {
    "T4": Card("T4", 65.0, 320),  # NVIDIA T4 datasheet: 65 TFLOPS mixed fp16/fp32, 320 GB/s
    "RTX 3090": Card("RTX 3090", 71.0, 936),  # GA102 whitepaper: fp16 tensor, fp32 accumulate, dense
    "RTX 4090": Card("RTX 4090", 165.2, 1008),  # Ada whitepaper: fp16 tensor, fp32 accumulate, dense
    # Ada whitepaper per-SM rate (512 fp16 FLOP/clock with fp32 accumulate) x 24 SMs x 2.37 GHz, the laptop part's
    # highest boost clock; a laptop at a lower power limit runs slower. 256 GB/s: 128-bit GDDR6 at 16 Gbps.
    "RTX 4060 Laptop": Card("RTX 4060 Laptop", 29.1, 256),
}
TARGET_CARD = {"colab-t4": "T4", "colab-t4-afternoon": "T4", "rtx-24gb": "RTX 4090", "laptop-8gb": "RTX 4060 Laptop"}

# Measured on the H100 (bench_gpu_profile --random-weights, capped to the target card), per measured profile.
H100_RATES = {
    "colab-t4": {"sft_model": "EleutherAI/pythia-1.4b-deduped", "sft_params": 1_414_647_808, "sft_seconds_per_step": 1.72,
                 "reward_model": "microsoft/deberta-v3-base", "reward_pairs_per_second": 12.0,
                 "ppo_seconds_per_update": 22.0, "ppo_batch_size": 32},
    "rtx-24gb": {"sft_model": "EleutherAI/pythia-2.8b-deduped", "sft_params": 2_775_208_960, "sft_seconds_per_step": 1.72,
                 "reward_model": "microsoft/deberta-v3-large", "reward_pairs_per_second": 7.8,
                 "ppo_seconds_per_update": 28.2, "ppo_batch_size": 64},
}
PARAMS = {"EleutherAI/pythia-410m-deduped": 405_334_016}


def _rates(sft: dict, reward: dict, ppo: dict) -> tuple[dict, str]:
    """The H100 rates for these settings, and how they were obtained."""
    for name, rates in H100_RATES.items():
        if rates["sft_model"] == sft["base_model"] and rates["reward_model"] == reward["base_model"]:
            return rates, f"measured ({name})"
    for name, rates in H100_RATES.items():
        family = rates["sft_model"].split("-")[0]
        if sft["base_model"].startswith(family) and sft["base_model"] in PARAMS and rates["reward_model"] == reward["base_model"]:
            scale = PARAMS[sft["base_model"]] / rates["sft_params"]
            scaled = dict(rates, sft_seconds_per_step=rates["sft_seconds_per_step"] * scale,
                          ppo_seconds_per_update=rates["ppo_seconds_per_update"] * scale)
            return scaled, f"{name}'s, policy scaled by parameters ({scale:.2f}x)"
    raise ValueError(f"no H100 rates for SFT base {sft['base_model']!r} with reward model {reward['base_model']!r}")


def work(profile_name: str) -> dict[str, Any]:
    """SFT steps, reward pairs (all reward models), PPO updates of a profile, and the rates they run at."""
    from utils.reward.stage import split_for_judge
    from utils.oasst import load_split, preference_pairs, rm_groups, sft_conversations

    profile = load_profile(profile_name)
    sft, reward, ppo = (profile.stage_params(s) for s in (SFT, REWARD, PPO))
    rates, source = _rates(sft, reward, ppo)
    split = load_split(OFFLINE_TRAIN_PATHS, sft["heldout_paths"], lang=sft["lang"], eval_fraction=sft["eval_fraction"], seed=sft["seed"])
    per_step = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"]
    if sft["max_steps"] > 0:
        sft_steps = sft["max_steps"]
    else:
        threads = len(sft_conversations(split.train)) * OASST1_SCALE
        sft_steps = math.ceil(threads / per_step) * sft["num_train_epochs"]
    proxy, judge = split_for_judge(split.train, reward["judge_fraction"], reward["seed"])
    pairs = 0.0
    for trees in (proxy, judge) if judge else (proxy,):
        n = len(preference_pairs(rm_groups(trees))) * OASST1_SCALE
        pairs += min(n, reward["max_train_pairs"]) if reward.get("max_train_pairs") else n
    # The H100 rates were measured with one reply to each of 32 (64) prompts; the profiles now sample 4 replies to each of
    # 8 (16): the same replies an update, which is what generation and optimisation cost (the fixed set is not included).
    replies = ppo["batch_size"] * ppo["replies_per_prompt"]
    if replies != rates["ppo_batch_size"]:
        raise ValueError(f"{profile_name}: PPO with {replies} replies an update was not measured (H100 rate is for {rates['ppo_batch_size']})")
    return {"sft_steps": sft_steps, "reward_pairs": pairs * reward["epochs"], "ppo_updates": ppo["updates"], "rates": rates,
            "rates_source": source}


def estimate(profile_name: str, card: Card | None = None) -> dict[str, Any]:
    """Minutes per training stage on the H100 (from its measured rates) and, with ``card``, on that card:
    ``{"h100": {...}, "card": {...}, "card_pessimistic": {...}}``, each ``{"02_sft", "03_reward", "04_ppo", "total"}``."""
    w = work(profile_name)
    r = w["rates"]
    h100 = {"02_sft": w["sft_steps"] * r["sft_seconds_per_step"] / 60,
            REWARD: w["reward_pairs"] / r["reward_pairs_per_second"] / 60,
            PPO: w["ppo_updates"] * r["ppo_seconds_per_update"] / 60}
    h100["total"] = sum(h100.values())
    out: dict[str, Any] = {"profile": profile_name, "work": {k: v for k, v in w.items() if k != "rates"}, "h100": h100}
    if card is not None:
        out["card"] = card.name
        out["bandwidth_ratio"] = H100.bandwidth_gbs / card.bandwidth_gbs
        out["tensor_ratio"] = H100.tensor_tflops / card.tensor_tflops
        out["estimate"] = {k: v * out["bandwidth_ratio"] for k, v in h100.items()}
        out["estimate_pessimistic"] = {k: v * out["tensor_ratio"] for k, v in h100.items()}
    return out


def cpu_run_minutes(run_dir: str | Path) -> dict[str, float]:
    """Minutes per stage of a finished run (its stage records), and the total."""
    from benchmarks.run import stage_rows

    rows = {row["stage"]: (row["seconds"] or 0) / 60 for row in stage_rows(Path(run_dir))}
    return {**rows, "total": sum(rows.values())}


def _hm(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


def markdown(estimates: list[dict[str, Any]], cpu_runs: dict[str, dict[str, float]]) -> str:
    lines = ["### Time to result per profile", "",
             "GPU profiles: **estimates** of the training loops (SFT, both reward models, PPO; DPO and evaluations not included),",
             "from the H100 rates measured by `bench_gpu_profile`, scaled to the target card by memory bandwidth",
             "(pessimistic end: by dense fp16/bf16 tensor throughput). Method: `benchmarks/time_to_result.py`.", "",
             "| profile | target card | SFT | reward | PPO | training total on the card (estimate) | pessimistic | H100, from measured rates | rates |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in estimates:
        est, pes = e["estimate"], e["estimate_pessimistic"]
        lines.append(f"| `{e['profile']}` | {e['card']} | {_hm(est['02_sft'])} | {_hm(est['03_reward'])} | {_hm(est['04_ppo'])} | "
                     f"{_hm(est['total'])} | {_hm(pes['total'])} | {_hm(e['h100']['total'])} | {e['work']['rates_source']} |")
    lines += ["", "CPU profiles: measured whole-pipeline runs (`python -m recipes.run --profile NAME`, stage records).", "",
              "| profile | machine | whole pipeline |", "|---|---|---|"]
    for name in ("tiny", "smol"):
        run = cpu_runs.get(name)
        lines.append(f"| `{name}` | (the machine the run was on) | {_hm(run['total']) if run else 'not measured yet'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import write_table

    ap = argparse.ArgumentParser(prog="python -m benchmarks.time_to_result", description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-run", action="append", default=[], metavar="PROFILE=RUN_DIR", help="a finished CPU run to tabulate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    estimates = [estimate(name, CARDS[card]) for name, card in TARGET_CARD.items()]
    cpu_runs = {}
    for item in args.cpu_run:
        name, _, run_dir = item.partition("=")
        cpu_runs[name] = cpu_run_minutes(REPO_ROOT / run_dir if not Path(run_dir).is_absolute() else run_dir)
    if args.json:
        print(json.dumps({"estimates": estimates, "cpu_runs": cpu_runs}, default=str))
    else:
        write_table("time-to-result", markdown(estimates, cpu_runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
