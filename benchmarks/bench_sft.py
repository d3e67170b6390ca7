"""SFT throughput and memory of the tiny profile: QLoRA (NF4 base) beside LoRA on the full-precision base.

Run: ``python -m benchmarks.bench_sft [--steps 12] [--rounds 2] [--json]``.

Both sides run stage 02's code (``utils.sft``: ``encode_conversations``, ``add_lora``, ``make_trainer``,
``train``) with the tiny profile's 02_sft settings (LoRA rank and targets, batch size, max_length, learning
rate) on the OASST training split, for ``--steps`` optimizer steps; they differ only in ``quantization``.
The base has the tiny base's shape and tokenizer (``recipes/profiles/tiny.yaml``), randomly initialised
(throughput does not depend on what the weights learned, and this skips the 3 minutes of pretraining);
it is built once into ``runs/bench/sft/``.

Measured, per side, each in its own subprocess, the sides alternating ``--rounds`` times so that a change
of load on a shared machine hits both:

* **tokens/s**: non-pad tokens trained on over the seconds spent in optimizer steps, exactly the
  ``tokens_per_second`` stage 02 writes to its metrics (the best round is kept);
* **peak memory**: the process's peak resident set during model loading and training, above its resident
  set after imports and data (``utils.model.modeling.peak_memory_mb``, the figure stage 02 reports, counts the
  interpreter and libraries too; it is printed beside).

The ratio QLoRA / LoRA says what 4-bit weights cost in speed and save in memory on this machine; on a
CPU, bitsandbytes dequantizes each weight on every forward pass, and a 5M-parameter model has little
memory to save, so the ratios here are not the GPU's (where NF4 is the difference between fitting and not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import ROOT, run_worker

from utils.pipeline.stages import SFT

BENCH_DIR = ROOT / "runs" / "bench" / "sft"
SIDES = ("nf4", "none")


def _profile_params() -> dict:
    from utils.pipeline.profile import load_profile

    return load_profile("tiny").stage_params(SFT)


def build_base() -> Path:
    """The tiny base's tokenizer and architecture, random weights (seeded), saved once."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from utils.oasst import load_split, message_texts
    from utils.model.tiny_base import TinyBaseConfig, _model_config, train_tokenizer

    path = BENCH_DIR / "base"
    if (path / "config.json").exists():
        return path
    params = _profile_params()
    config = TinyBaseConfig(**params["tiny_base"])
    split = load_split(params["train_paths"], params["heldout_paths"], params["lang"], params["eval_fraction"], params["seed"])
    tokenizer = train_tokenizer(message_texts(split.train), config.vocab_size)
    tokenizer.model_max_length = config.context_length
    torch.manual_seed(config.seed)
    GPTNeoXForCausalLM(_model_config(config, tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def worker(side: str, steps: int) -> dict:
    """One side, in this process: prepare data, reset the memory window, load, train; return the figures."""
    import torch

    from utils.sft.data import encode_conversations
    from utils.sft.params import SFTParams
    from utils.sft.training import add_lora, make_trainer, train_sft
    from utils.model.modeling import load_causal_lm, load_tokenizer, peak_memory_mb, reset_peak_memory
    from utils.oasst import load_split, sft_conversations

    params = _profile_params()
    base = BENCH_DIR / "base"
    split = load_split(params["train_paths"], params["heldout_paths"], params["lang"], params["eval_fraction"], params["seed"])
    settings = SFTParams(
        lora_r=params["lora_r"], lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"],
        lora_target_modules=params["lora_target_modules"], learning_rate=params["learning_rate"], max_steps=steps,
        per_device_train_batch_size=params["per_device_train_batch_size"],
        gradient_accumulation_steps=params["gradient_accumulation_steps"], max_length=params["max_length"],
        logging_steps=1, seed=params["seed"], group_by_length=False, eval_steps=0,  # as when these figures were measured
    )
    tokenizer = load_tokenizer(base)
    train = encode_conversations(sft_conversations(split.train), tokenizer, settings.max_length).dataset
    evals = encode_conversations(sft_conversations(split.eval)[:8], tokenizer, settings.max_length).dataset
    reset_peak_memory()
    baseline = _rss_mb()
    model = add_lora(load_causal_lm(base, side, "cpu", tokenizer=tokenizer), tokenizer, settings)
    stats = train_sft(make_trainer(model, tokenizer, train, evals, settings, BENCH_DIR / f"out-{side}"))
    peak = peak_memory_mb()
    return {"side": side, "tokens_per_second": stats.tokens_per_second, "tokens": stats.tokens_seen,
            "peak_above_baseline_mb": peak - baseline, "process_peak_mb": peak, "threads": torch.get_num_threads()}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_side(side: str, steps: int) -> dict:
    return run_worker("benchmarks.bench_sft", side, "--steps", str(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return

    build_base()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            runs[side].append(run_side(side, args.steps))
    best = {side: max(r, key=lambda x: x["tokens_per_second"]) for side, r in runs.items()}
    peak = {side: min(x["peak_above_baseline_mb"] for x in r) for side, r in runs.items()}
    result = {
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": best["nf4"]["threads"],
        **{f"{side}_tokens_per_second": best[side]["tokens_per_second"] for side in SIDES},
        **{f"{side}_peak_above_baseline_mb": peak[side] for side in SIDES},
        **{f"{side}_process_peak_mb": min(x["process_peak_mb"] for x in runs[side]) for side in SIDES},
        "speed_ratio_nf4_over_none": best["nf4"]["tokens_per_second"] / best["none"]["tokens_per_second"],
        "memory_ratio_nf4_over_none": peak["nf4"] / peak["none"],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"SFT on the tiny profile's settings, {args.steps} steps x {args.rounds} rounds, {result['threads']} threads\n")
    print(f"| {'side':<18} | {'tokens/s':>9} | {'peak above baseline (MiB)':>25} | {'process peak (MiB)':>18} |")
    print(f"|{'-' * 20}|{'-' * 11}|{'-' * 27}|{'-' * 20}|")
    for side, name in (("nf4", "QLoRA (NF4 base)"), ("none", "LoRA (fp32 base)")):
        print(f"| {name:<18} | {result[f'{side}_tokens_per_second']:>9,.0f} | {result[f'{side}_peak_above_baseline_mb']:>25,.0f} "
              f"| {result[f'{side}_process_peak_mb']:>18,.0f} |")
    print(f"\nQLoRA / LoRA: speed {result['speed_ratio_nf4_over_none']:.2f}x, memory {result['memory_ratio_nf4_over_none']:.2f}x")


if __name__ == "__main__":
    main()
