"""The kit's PPO (``utils/ppo/``) against trl 1.12's ``trl.experimental.ppo.PPOTrainer``, side by side.

Both sides train the same policy with the same reward model on the same batch of prompts, and the script
prints seconds per update and peak memory for each, and the ratios (targets: memory ≤ 0.6× trl's, speed
≥ 1.3× trl's). Run: ``python -m benchmarks.bench_ppo_vs_trl [--updates 5] [--rounds 2] [--json]``.

What is shared (built once into ``runs/bench/ppo_vs_trl/``, seeded):

* a byte-level BPE tokenizer trained on the OASST training split (``utils.model.tiny_base.train_tokenizer``);
* the policy: a random GPT-NeoX, by default of Pythia-70M's shape (hidden 512, 6 layers, 8 heads; 23M
  parameters with this vocabulary); ``--shape tiny`` takes the offline profile's tiny base instead (256, 4
  layers, 5M parameters), where the process's fixed memory (allocator, autograd, library pages; about
  100 MiB) outweighs the models and the memory ratio says little about either trainer;
* the reward model: a random GPT-NeoX sequence classifier (one output) on the *same* tokenizer, because
  trl's trainer feeds the policy's token ids straight to it; the kit's side decodes the replies and scores
  the conversations through ``utils.model.chat_format``, as it does with the stage-03 reward model;
* prompts: OASST ``rl`` prompts of the training split of at most ``--max-prompt-tokens`` tokens.

Matched settings: float32 on the CPU (CUDA hidden), LoRA (r 16, α 32) on every linear layer of the
policy, fixed KL coefficient 0.05, temperature 1 with no top-k/top-p, ``--batch-size`` prompts per update,
``--mini-batch-size`` per optimiser step, ``--epochs`` PPO epochs, ``--max-new-tokens`` per reply, the same
learning rate. Each side keeps its own design for the rest: trl trains a separate value model (a full copy
of the backbone with a score head, every weight trainable) and takes the reference by disabling the
adapter; the kit puts a value head on the policy's hidden states.

trl runs in a throwaway virtual environment (``runs/bench/trl112-venv``, made on the first run: trl 1.12
with the kit's transformers, peft, accelerate, datasets, and ``torch==2.13.0``, the local CPU wheel) as a
subprocess; the kit's side runs in its own subprocess of this interpreter. The two alternate
``--rounds`` times, so a load change on a shared machine hits both.

Measured: **seconds per update**, the median over updates after the first (warm-up) of all rounds; and
**peak memory**, the process's peak resident set above its resident set after imports and data (the
interpreter and libraries, about equal on both sides, are not counted). Peak memory comes from a separate
short run per side (``--memory-updates``) with glibc told to hand freed memory back at once
(``MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``), so that the peak follows
the tensors alive (what ``torch.cuda.max_memory_allocated`` counts on a GPU) rather than the allocator's
caches; the peak under the default allocator, from the timed runs, is printed beside it. The
allocator settings slow both sides, which is why the timed runs do without them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "runs" / "bench"
SETUP_DIR = BENCH_DIR / "ppo_vs_trl"
VENV_DIR = BENCH_DIR / "trl112-venv"
TRL_REQUIREMENTS = ["trl==1.12.*", "transformers==5.23.0", "peft==0.21.2", "accelerate==1.15.0", "datasets==5.2.0"]
TORCH = "torch==2.13.0"  # the local CPU wheel; pinned in every install so pip never swaps in a CUDA build
SHAPES = {"pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8),
          "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4)}  # utils.model.tiny_base.TinyBaseConfig
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])
TARGET_MEMORY_RATIO, TARGET_SPEED_RATIO = 0.6, 1.3


# ---- memory of this process (Linux /proc) ------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_memory_window() -> float:
    """Reset the peak RSS (VmHWM) and return the current RSS: the baseline the peak is measured above."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


# ---- shared setup ---------------------------------------------------------------------------------------------


def build_setup(args: argparse.Namespace) -> Path:
    """Tokenizer, policy, reward model and prompts, written to SETUP_DIR (reused when the settings match)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

    from utils.model.chat_format import encode_prompt
    from utils.oasst import load_split, message_texts, rl_prompts
    from utils.model.tiny_base import TinyBaseConfig, train_tokenizer

    key = {"shape": args.shape, "max_prompt_tokens": args.max_prompt_tokens, "n_prompts": args.n_prompts, "version": 1}
    meta = SETUP_DIR / "setup.json"
    if meta.exists() and json.loads(meta.read_text()) == key:
        return SETUP_DIR
    SETUP_DIR.mkdir(parents=True, exist_ok=True)
    split = load_split([str(ROOT / "data" / "oasst1_en_validation_messages.jsonl")], [str(ROOT / "data" / "oasst_en_100_trees.jsonl")])
    tiny = TinyBaseConfig()
    tokenizer = train_tokenizer(message_texts(split.train), tiny.vocab_size)
    tokenizer.save_pretrained(SETUP_DIR / "tokenizer")
    shape = SHAPES[args.shape]
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), **shape, intermediate_size=4 * shape["hidden_size"], max_position_embeddings=tiny.context_length,
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(SETUP_DIR / "policy")
    config.num_labels = 1
    GPTNeoXForSequenceClassification(config).save_pretrained(SETUP_DIR / "reward")
    prompts = [p for p in rl_prompts(split.train) if len(encode_prompt(p, tokenizer)) <= args.max_prompt_tokens][: args.n_prompts]
    rows = [{"prompt": p, "input_ids": encode_prompt(p, tokenizer)} for p in prompts]
    (SETUP_DIR / "prompts.json").write_text(json.dumps(rows))
    meta.write_text(json.dumps(key))
    return SETUP_DIR


def ensure_trl_venv() -> Path:
    python = VENV_DIR / "bin" / "python"
    marker = VENV_DIR / ".installed"
    if marker.exists():
        return python
    print(f"creating {VENV_DIR} with trl 1.12 (first run only) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [TORCH], check=True)
    subprocess.run(pip + TRL_REQUIREMENTS + [TORCH], check=True)
    marker.write_text(" ".join(TRL_REQUIREMENTS + [TORCH]) + "\n")
    return python


# ---- the two sides, each in its own process ------------------------------------------------------------------------


def run_ours(args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    from utils.model.chat_format import encode
    from utils.ppo.params import PPOParams
    from utils.ppo.trainer import PPOTrainer
    from utils.ppo.model import build_actor_critic

    rows = json.loads((SETUP_DIR / "prompts.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(SETUP_DIR / "tokenizer")
    baseline = start_memory_window()
    torch.manual_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(SETUP_DIR / "policy", dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(SETUP_DIR / "reward", dtype=torch.float32).eval()

    @torch.no_grad()
    def reward(prompts, replies):
        ids = [encode([*p, {"role": "assistant", "content": r}], tokenizer).input_ids for p, r in zip(prompts, replies)]
        width = max(map(len, ids))
        batch = torch.full((len(ids), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, seq in enumerate(ids):
            batch[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        return reward_model(input_ids=batch, attention_mask=mask).logits[:, 0].tolist()

    model = build_actor_critic(policy, lora=LoraConfig(task_type="CAUSAL_LM", **LORA))
    config = PPOParams(
        batch_size=args.batch_size, replies_per_prompt=1, mini_batch_size=args.mini_batch_size, ppo_epochs=args.epochs, max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens, learning_rate=args.learning_rate, init_kl_coef=0.05, target_kl=None,
        missing_eos_penalty=0.0, seed=args.seed,
    )
    trainer = PPOTrainer(model, tokenizer, [r["prompt"] for r in rows], reward, config, log=None)
    history = trainer.train(args.updates)
    return {"seconds": [r["seconds"] for r in history], "peak_mb": _status_mb("VmHWM") - baseline, "baseline_mb": baseline,
            "response_length": statistics.mean(r["response_length"] for r in history)}


def run_trl(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rows = json.loads((SETUP_DIR / "prompts.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(SETUP_DIR / "tokenizer", padding_side="left")
    dataset = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows]})
    baseline = start_memory_window()
    torch.manual_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(SETUP_DIR / "policy", dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(SETUP_DIR / "policy", num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(SETUP_DIR / "reward", dtype=torch.float32)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, *a, **k):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())

    clock = Clock()
    config = PPOConfig(
        output_dir=str(BENCH_DIR / "trl_output"), report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=args.seed,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size, num_ppo_epochs=args.epochs,
        local_rollout_forward_batch_size=args.batch_size, total_episodes=args.batch_size * args.updates,
        response_length=args.max_new_tokens, stop_token="eos", temperature=1.0, kl_coef=0.05,
        learning_rate=args.learning_rate, num_sample_generations=0, lr_scheduler_type="constant",
    )
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward_model,
        train_dataset=dataset, eval_dataset=dataset.select(range(args.batch_size)), value_model=value_model,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA), callbacks=[clock],
    )
    trainer.train()
    seconds = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return {"seconds": seconds, "peak_mb": _status_mb("VmHWM") - baseline, "baseline_mb": baseline}


# ---- the driver ----------------------------------------------------------------------------------------------------


# glibc: one arena, large blocks mmapped and unmapped on free, the heap trimmed at once (see the docstring)
RETURNING_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_side(side: str, python: Path, args: argparse.Namespace, updates: int, extra_env: dict[str, str] | None = None) -> dict:
    result = BENCH_DIR / f"result_{side}.json"
    result.unlink(missing_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "--side", side, "--result", str(result)]
    cmd += ["--updates", str(updates)]
    for name in ("threads", "batch_size", "mini_batch_size", "epochs", "max_new_tokens", "max_prompt_tokens", "n_prompts", "learning_rate", "seed"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"bench_ppo_vs_trl: the {side} side failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="pythia-70m", help="the policy's (and reward model's) size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per side (1 on a busy machine)")
    parser.add_argument("--updates", type=int, default=5, help="PPO updates per side and round (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each side, alternating")
    parser.add_argument("--memory-updates", type=int, default=2, help="PPO updates of the memory run of each side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-prompt-tokens", type=int, default=64)
    parser.add_argument("--n-prompts", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size % args.mini_batch_size:
        parser.error("--batch-size must be a multiple of --mini-batch-size (trl splits the batch into equal minibatches)")

    if args.side:  # a child process: one side, figures to --result
        import torch

        torch.set_num_threads(args.threads)
        out = (run_ours if args.side == "ours" else run_trl)(args)
        Path(args.result).write_text(json.dumps(out))
        return 0

    build_setup(args)
    pythons = {"ours": Path(sys.executable), "trl": ensure_trl_venv()}
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for round_ in range(args.rounds):
        for side in ("ours", "trl") if round_ % 2 == 0 else ("trl", "ours"):
            runs[side].append(run_side(side, pythons[side], args, args.updates))
            print(f"round {round_ + 1}: {side} done", file=sys.stderr)
    memory = {}
    for side in ("ours", "trl"):
        memory[side] = run_side(side, pythons[side], args, args.memory_updates, RETURNING_MALLOC)
        print(f"memory run: {side} done", file=sys.stderr)

    figures = {}
    for side, results in runs.items():
        after_warmup = [s for r in results for s in r["seconds"][1:]]
        figures[side] = {"seconds_per_update": statistics.median(after_warmup), "peak_memory_mb": memory[side]["peak_mb"],
                         "peak_memory_mb_default_malloc": max(r["peak_mb"] for r in results),
                         "baseline_rss_mb": statistics.mean(r["baseline_mb"] for r in results), "updates_timed": len(after_warmup)}
    memory_ratio = figures["ours"]["peak_memory_mb"] / figures["trl"]["peak_memory_mb"]
    speed_ratio = figures["trl"]["seconds_per_update"] / figures["ours"]["seconds_per_update"]
    summary = {
        "setup": {k: getattr(args, k) for k in ("shape", "threads", "updates", "rounds", "memory_updates", "batch_size", "mini_batch_size", "epochs", "max_new_tokens", "max_prompt_tokens")},
        "ours": figures["ours"], "trl_1_12": figures["trl"],
        "memory_ratio": memory_ratio, "speed_ratio": speed_ratio,
        "targets": {"memory_ratio_max": TARGET_MEMORY_RATIO, "speed_ratio_min": TARGET_SPEED_RATIO},
        "targets_met": memory_ratio <= TARGET_MEMORY_RATIO and speed_ratio >= TARGET_SPEED_RATIO,
        "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"PPO update: {args.batch_size} prompts, {args.max_new_tokens} new tokens, {args.epochs} epochs x minibatches of {args.mini_batch_size}; "
          f"{args.shape} shape, CPU float32, {args.threads} thread(s) per side, {summary['machine']}")
    print(f"{'':12}{'s/update':>10}{'peak MiB':>10}{'(default malloc)':>18}")
    for name, side in (("kit PPO", "ours"), ("trl 1.12", "trl")):
        f = figures[side]
        print(f"{name:12}{f['seconds_per_update']:>10.2f}{f['peak_memory_mb']:>10.0f}{f['peak_memory_mb_default_malloc']:>18.0f}")
    print(f"memory: {memory_ratio:.2f}x trl's (target <= {TARGET_MEMORY_RATIO}x)   speed: {speed_ratio:.2f}x trl's (target >= {TARGET_SPEED_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
