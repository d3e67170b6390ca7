"""PPO seconds per update by phase, before and after the log-probs speed-up, side by side in one run.

Run: ``python -m benchmarks.bench_ppo_phases [--profile tiny] [--updates 3] [--rounds 2] [--threads 1] [--json]``;
on a GPU without the hub: ``python -m benchmarks.bench_ppo_phases --profile colab-t4 --random-weights --device cuda --clock wall``.

Both sides run ``utils.ppo.trainer.PPOTrainer`` on the same policy, reward model, prompts and seeds; ``old`` replaces
``PPOTrainer._forward_batched`` by the version before the speed-up (kept below, verbatim: minibatches in rollout
order over the whole padded layout), ``new`` is the kit's. Each side runs in its own subprocess, the sides
alternating ``--rounds`` times; seconds per update are the median over the updates after the first (warm-up)
of every round, and each phase's seconds (``seconds_generate``, ``_score``, ``_logprobs``, ``_optimise``, the
trainer's own log) likewise. ``--clock cpu`` (the default) has the trainer's clock read the main thread's CPU
time instead of the wall clock: with ``--threads 1`` every computation runs on that thread, and other jobs on a
shared machine then barely move the figures; ``--clock wall`` gives what a user waits.

Settings: the profile's stage 04 parameters (``PPOParams``; no reward-normalisation sample, so both
sides score the same replies), its stage 02 quantization and LoRA shape:

* ``tiny``: the tiny base's shape and tokenizer with random weights (``benchmarks.bench_sft.build_base``), a
  fresh LoRA adapter with GPT-NeoX's defaults;
* ``smol``: SmolLM2-135M-Instruct itself;
* a GPU profile, with ``--random-weights``: its base's architecture with random weights
  (``benchmarks.bench_gpu_profile.build_random_model``) and the vendored OASST sample as prompts.

The reward model is MiniLM with a random head (``utils.reward.model.load_backbone``): scoring costs what stage 03's
model costs. A random policy rarely says its stop token, so replies run to ``max_new_tokens``: the padding
left is the prompts'. Prompts are OASST ``rl`` prompts of the training split, at most ``max_prompt_tokens``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from benchmarks import ROOT, run_worker

from utils.ppo.trainer import PPOTrainer
from utils.ppo.rollout import Rollout, entropy_from_logits, token_logprobs

SIDES = ("old", "new")
BENCH_DIR = ROOT / "runs" / "bench" / "ppo_phases"
PHASES = ("generate", "score", "logprobs", "optimise")


class OldForwardPPOTrainer(PPOTrainer):
    """The trainer with ``_forward_batched`` as it was before the speed-up."""

    def _forward_batched(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out: list[tuple[torch.Tensor, ...]] = []
        width = rollout.response_mask.shape[1]
        for first in range(0, len(rollout.input_ids), self.local_mini_batch):
            rows = slice(first, first + self.local_mini_batch)
            logits, values = self.model(rollout.input_ids[rows, :-1], rollout.attention_mask[rows, :-1], width)
            logprobs = token_logprobs(logits, rollout.response_ids[rows], self.config.temperature)
            out.append((logprobs, values, entropy_from_logits(logits, self.config.temperature)))
        return tuple(torch.cat(parts) for parts in zip(*out))  # type: ignore[return-value]


def worker(setting: str, side: str, updates: int, threads: int, clock: str = "cpu", device: str = "cpu",
           random_weights: bool = False) -> dict:
    import time
    import types

    from peft import LoraConfig

    import utils.ppo.trainer

    from utils.model.modeling import load_causal_lm, load_tokenizer
    from utils.oasst import load_split, rl_prompts
    from utils.ppo.params import PPOParams
    from utils.ppo.model import build_actor_critic
    from utils.pipeline.profile import load_profile
    from utils.reward.model import RewardScorer, load_backbone
    from utils.rl.reward_functions import scorer_reward
    from utils.pipeline.stages import PPO, SFT

    torch.set_num_threads(threads)
    if clock == "cpu":  # the trainer times its phases with time.perf_counter: give it this thread's CPU clock
        utils.ppo.trainer.time = types.SimpleNamespace(perf_counter=time.thread_time)
    profile = load_profile(setting)
    sft_params, ppo_params = profile.stage_params(SFT), profile.stage_params(PPO)
    config = PPOParams(**{**ppo_params, "reward_norm_samples": 0})
    train_paths = ppo_params["train_paths"]
    if random_weights:
        from benchmarks.bench_gpu_profile import OFFLINE_TRAIN_PATHS

        train_paths = OFFLINE_TRAIN_PATHS
    split = load_split(train_paths, ppo_params["heldout_paths"], lang=ppo_params["lang"],
                       eval_fraction=ppo_params["eval_fraction"], seed=ppo_params["seed"])
    lora = LoraConfig(task_type="CAUSAL_LM", r=sft_params["lora_r"], lora_alpha=sft_params["lora_alpha"], lora_dropout=0.0,
                      target_modules=sft_params["lora_target_modules"])
    name = sft_params["base_model"]
    if name == "tiny":
        from benchmarks.bench_sft import build_base

        base, lora = build_base(), None
    elif random_weights:
        from benchmarks.bench_gpu_profile import build_random_model
        from utils.oasst import message_texts
        from utils.model.tiny_base import train_tokenizer

        base = BENCH_DIR / "models" / name.replace("/", "--")
        build_random_model(name, train_tokenizer(message_texts(split.train), vocab_size=8192), base, device)
    else:
        base = name
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = build_actor_critic(load_causal_lm(base, sft_params["quantization"], device, tokenizer=tokenizer), lora=lora)
    reward_model, reward_tokenizer, _ = load_backbone("sentence-transformers/all-MiniLM-L6-v2")
    reward = scorer_reward(RewardScorer(reward_model.to(device), reward_tokenizer, 256, device), 16)
    trainer_class = OldForwardPPOTrainer if side == "old" else PPOTrainer
    trainer = trainer_class(model, tokenizer, rl_prompts(split.train), reward, config, log=None)
    history = trainer.train(updates)
    return {"side": side, "history": [{k: v for k, v in row.items() if k.startswith("seconds")} for row in history],
            "reward_mean": [row["reward_mean"] for row in history], "threads": torch.get_num_threads(),
            "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}


def run_side(setting: str, side: str, updates: int, threads: int, clock: str, device: str = "cpu",
             random_weights: bool = False) -> dict:
    return run_worker("benchmarks.bench_ppo_phases", side, "--profile", setting, "--updates", str(updates), "--threads", str(threads),
                      "--clock", clock, "--device", device, *(["--random-weights"] if random_weights else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ppo_phases", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", "--setting", dest="setting", default="tiny", help="tiny or smol; a GPU profile with --random-weights")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--random-weights", action="store_true", help="no model hub: random weights of the profile's base, vendored data")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side (1: least disturbed by other jobs)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="the main thread's CPU time, or wall time")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.setting, args.worker, args.updates, args.threads, args.clock, args.device, args.random_weights)))
        return 0

    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            runs[side].append(run_side(args.setting, side, args.updates, args.threads, args.clock, args.device, args.random_weights))
    if runs["old"][0]["reward_mean"] != runs["new"][0]["reward_mean"]:
        print("note: the sides' rewards differ (float rounding of the log-probs can change a later sample)", file=sys.stderr)
    result: dict = {"setting": args.setting, "updates": args.updates, "rounds": args.rounds, "threads": args.threads,
                    "clock": args.clock, "device": args.device, "random_weights": args.random_weights, "sides": {}}
    for side, rounds in runs.items():
        rows = [row for r in rounds for row in r["history"][1:]]  # update 1 warms up
        result["sides"][side] = {"seconds_per_update": statistics.median(row["seconds"] for row in rows),
                                 **{f"seconds_{p}": statistics.median(row[f"seconds_{p}"] for row in rows) for p in PHASES}}
    old, new = result["sides"]["old"], result["sides"]["new"]
    result["ratio_old_over_new"] = old["seconds_per_update"] / new["seconds_per_update"]
    result["logprobs_ratio_old_over_new"] = old["seconds_logprobs"] / new["seconds_logprobs"]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"PPO on the {args.setting} setting, {args.updates} updates x {args.rounds} rounds, {args.threads} thread(s); "
          f"median {args.clock} seconds over the updates after the first\n")
    print("| side | s/update | " + " | ".join(PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    for side, s in result["sides"].items():
        print(f"| {side} | {s['seconds_per_update']:.2f} | " + " | ".join(f"{s[f'seconds_{p}']:.2f}" for p in PHASES) + " |")
    print(f"\nold / new: {result['ratio_old_over_new']:.2f}x per update, {result['logprobs_ratio_old_over_new']:.2f}x on log-probs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
