"""SFT real tokens/s with today's padded batches beside length-grouped and padding-free ones, in one run.

Run: ``python -m benchmarks.bench_sft_batching [--profile tiny] [--conversations 96] [--rounds 2] [--threads 1] [--json]``;
on a GPU without the hub: ``python -m benchmarks.bench_sft_batching --profile colab-t4 --random-weights --device cuda``.

Every side runs stage 02's code (``utils.sft``: ``encode_conversations``, ``add_lora``, ``make_trainer``,
``train``) with the profile's 02_sft settings for one epoch over the same ``--conversations`` threads of the
OASST training split (a seeded random sample), so every side trains on exactly the same tokens; the sides
differ only in ``group_by_length`` and ``padding_free`` (``benchmarks.bench_padding.SFT_VARIANTS``). (A fixed
number of steps would not do: length-grouped batches come longest first, so their first steps hold other
conversations than random batches' first steps.) For
``tiny`` the base has the tiny base's shape and tokenizer with random weights (as ``bench_sft``); for ``smol``
it is SmolLM2-135M itself; for a GPU profile under ``--random-weights`` it is the profile's architecture with
random weights and the vendored OASST sample as data (``benchmarks.bench_gpu_profile``: speed and memory
depend on the shapes, not the weights). Each side runs in its own subprocess, the sides alternating ``--rounds`` times so
that a change of load on a shared machine hits all of them; the best round of each side is kept.

Measured per side:

* **real tokens/s**: tokens of the conversations trained on (never padding) over the seconds spent in
  optimizer steps, stage 02's ``tokens_per_second``; and the same over the CPU time of those steps (the main
  thread's, all the compute with ``--threads 1``), which other jobs on a shared machine disturb far less;
* **padding share**: positions computed that held no token, over every position computed, in the batches
  that side trained on (counted in its collator).

The ratio of each side's real tokens/s to the padded side's is the speed-up; on a CPU, compute grows with
every position computed, so removing padding pays about in proportion, minus the longer attention rows of a
padding-free batch (one row of all its conversations, attention masked block-diagonally).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from transformers import TrainerCallback

from benchmarks import ROOT, run_worker
from benchmarks.bench_padding import SFT_VARIANTS, count_tokens

from utils.pipeline.stages import SFT

BENCH_DIR = ROOT / "runs" / "bench" / "sft_batching"


class BatchCounter:
    """Counts real tokens and positions of the micro-batches the trainer trains on (its ``compute_loss`` calls
    in train mode: evaluation batches and batches the dataloader built ahead are left out)."""

    def __init__(self, trainer) -> None:
        self.compute_loss, self.trainer = trainer.compute_loss, trainer
        self.real = self.computed = 0
        trainer.compute_loss = self

    def __call__(self, model, inputs, *args, **kwargs):
        if model.training:
            real, computed = count_tokens(inputs)
            self.real, self.computed = self.real + real, self.computed + computed
        return self.compute_loss(model, inputs, *args, **kwargs)


class CpuClock(TrainerCallback):
    """CPU seconds of this thread inside optimizer steps."""

    def __init__(self) -> None:
        self.seconds, self._t = 0.0, None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.thread_time()

    def on_step_end(self, args, state, control, **kw):
        if self._t is not None:
            self.seconds += time.thread_time() - self._t
            self._t = None


def worker(profile: str, side: str, conversations: int, threads: int, device: str = "cpu", random_weights: bool = False) -> dict:
    import torch

    from benchmarks.bench_padding import sft_settings
    from utils.sft.data import encode_conversations
    from utils.sft.training import add_lora, make_trainer, train_sft
    from utils.model.modeling import load_causal_lm, load_tokenizer
    from utils.oasst import load_split, sft_conversations
    from utils.pipeline.profile import load_profile

    torch.set_num_threads(threads)
    params = load_profile(profile).stage_params(SFT)
    train_paths = params["train_paths"]
    if random_weights:  # no hub: the vendored sample, and the base's shape with random weights
        from benchmarks.bench_gpu_profile import OFFLINE_TRAIN_PATHS

        train_paths = OFFLINE_TRAIN_PATHS
    split = load_split(train_paths, params["heldout_paths"], params["lang"], params["eval_fraction"], params["seed"])
    if params["base_model"] == "tiny":
        from benchmarks.bench_sft import build_base

        base = build_base()
    elif random_weights:
        from benchmarks.bench_gpu_profile import build_random_model
        from utils.oasst import message_texts
        from utils.model.tiny_base import train_tokenizer

        name = params["base_model"]
        base = BENCH_DIR / "models" / name.replace("/", "--")
        build_random_model(name, train_tokenizer(message_texts(split.train), vocab_size=8192), base, device)
    else:
        base = params["base_model"]
    settings = sft_settings(params)
    settings.__dict__.update(SFT_VARIANTS[side], max_steps=-1, num_train_epochs=1, logging_steps=1, eval_steps=0, save_steps=0)
    tokenizer = load_tokenizer(base)
    threads_ = sft_conversations(split.train)
    sample = random.Random(0).sample(threads_, min(conversations, len(threads_)))
    train = encode_conversations(sample, tokenizer, settings.max_length).dataset
    evals = encode_conversations(sft_conversations(split.eval)[:2], tokenizer, settings.max_length).dataset
    model = add_lora(load_causal_lm(base, params["quantization"], device, tokenizer=tokenizer), tokenizer, settings)
    trainer = make_trainer(model, tokenizer, train, evals, settings, BENCH_DIR / f"out-{side}")
    counter = BatchCounter(trainer)
    cpu = CpuClock()
    trainer.add_callback(cpu)
    stats = train_sft(trainer)
    return {"side": side, "tokens_per_second": stats.tokens_per_second, "tokens": stats.tokens_seen,
            "counted_tokens": counter.real, "padding_share": 1 - counter.real / counter.computed,
            "seconds": stats.train_seconds, "cpu_seconds": cpu.seconds,
            "cpu_tokens_per_second": stats.tokens_seen / cpu.seconds, "threads": torch.get_num_threads(), "device": device,
            "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}


def run_side(profile: str, side: str, conversations: int, threads: int, device: str = "cpu", random_weights: bool = False) -> dict:
    return run_worker("benchmarks.bench_sft_batching", side, "--profile", profile, "--conversations", str(conversations),
                      "--threads", str(threads), "--device", device, *(["--random-weights"] if random_weights else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sft_batching", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="tiny", help="tiny or smol; a GPU profile with --random-weights")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--random-weights", action="store_true", help="no model hub: random weights of the profile's base, vendored data")
    parser.add_argument("--conversations", type=int, default=96, help="threads trained on, one epoch, the same on every side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side (1: least disturbed by other jobs)")
    parser.add_argument("--sides", nargs="+", default=list(SFT_VARIANTS), choices=list(SFT_VARIANTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=list(SFT_VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.profile, args.worker, args.conversations, args.threads, args.device, args.random_weights)))
        return 0

    if "padded" not in args.sides:
        args.sides.insert(0, "padded")  # the baseline every ratio is taken against
    runs: dict[str, list[dict]] = {side: [] for side in args.sides}
    for _ in range(args.rounds):
        for side in args.sides:
            runs[side].append(run_side(args.profile, side, args.conversations, args.threads, args.device, args.random_weights))
    best = {side: max(r, key=lambda x: x["tokens_per_second"]) for side, r in runs.items()}
    best_cpu = {side: max(x["cpu_tokens_per_second"] for x in r) for side, r in runs.items()}
    result = {"profile": args.profile, "conversations": args.conversations, "tokens": best["padded"]["tokens"],
              "rounds": args.rounds, "threads": args.threads, "device": args.device, "random_weights": args.random_weights,
              "sides": {side: {"tokens_per_second": b["tokens_per_second"], "padding_share": b["padding_share"],
                               "all_rounds_tokens_per_second": [x["tokens_per_second"] for x in runs[side]],
                               "ratio_to_padded": b["tokens_per_second"] / best["padded"]["tokens_per_second"],
                               "cpu_tokens_per_second": best_cpu[side],
                               "cpu_ratio_to_padded": best_cpu[side] / best_cpu["padded"],
                               "peak_gpu_memory_mb": b["peak_gpu_memory_mb"]}
                        for side, b in best.items()}}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"SFT on the {args.profile} profile's settings, one epoch of {args.conversations} threads ({result['tokens']:,} tokens) "
          f"x {args.rounds} rounds, {args.threads} thread(s), {args.device}{' (random weights)' if args.random_weights else ''}\n")
    print("| batching | padding share | real tokens/s, wall (best round) | every round | ratio | real tokens per CPU second (best) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for side, s in result["sides"].items():
        rounds = ", ".join(f"{t:,.0f}" for t in s["all_rounds_tokens_per_second"])
        print(f"| {side} | {s['padding_share']:.0%} | {s['tokens_per_second']:,.0f} | {rounds} | {s['ratio_to_padded']:.2f}x "
              f"| {s['cpu_tokens_per_second']:,.0f} | {s['cpu_ratio_to_padded']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
