"""A GPU profile's training stages on the card at hand, capped to the memory of the card it is written for.

    python -m benchmarks.bench_gpu_profile --profile colab-t4 --max-gpu-memory-gib 15
    python -m benchmarks.bench_gpu_profile --profile rtx-24gb --max-gpu-memory-gib 23 --random-weights

Stages 02 (SFT), 03 (reward model), 04 (PPO), 04 (DPO) and 04 (RLOO) run as ``python -m recipes.train <stage>``, one after
the other into ``runs/bench/<profile>-gpu/``, with the profile's own settings (batch sizes, sequence lengths,
LoRA, quantization, gradient checkpointing) but shortened: ``--sft-steps`` optimizer steps, ``--reward-pairs``
training pairs, ``--ppo-updates`` updates, ``--dpo-pairs`` DPO training pairs, ``--rloo-updates`` RLOO updates, small held-out sets. Speed per step and peak memory are those of
the full run; a full run's time is its number of steps times the seconds per step.

``--max-gpu-memory-gib`` caps torch's allocator (``torch.cuda.set_per_process_memory_fraction``), so a
larger card stands in for a smaller one: a stage that would not fit the smaller card fails here with an
out-of-memory error. Speed is the larger card's.

``--random-weights`` is for machines without the model hub: each model of the profile is rebuilt from its
published architecture (``SHAPES``: the numbers of its config.json) with random weights, beside a byte-level
BPE tokenizer trained on the OASST training split (8,192 tokens; the embedding matrices keep the real
vocabulary size). Time and memory depend on the shapes, not on the weights' values; the losses and
accuracies of such a run mean nothing. The training data is then the vendored OASST sample, since the
profile's ``hf:`` source cannot be fetched.

Writes ``benchmarks/results/<profile>-gpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import machine, write_table
from recipes.train import STAGES
from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.stages import DPO, PPO, REWARD, RLOO, SFT

OFFLINE_TRAIN_PATHS = ["data/oasst1_en_validation_messages.jsonl"]

# Published architectures (the hub's config.json of each), for --random-weights.
_PYTHIA = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
               max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False, vocab_size=50304)
_DEBERTA_V3 = dict(vocab_size=128100, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                   max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                   pos_att_type=["p2c", "c2p"], position_biased_input=False, layer_norm_eps=1e-7, pooler_dropout=0.0)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "EleutherAI/pythia-410m-deduped": ("gpt_neox", dict(_PYTHIA, hidden_size=1024, num_hidden_layers=24,
                                                        num_attention_heads=16, intermediate_size=4096)),
    "EleutherAI/pythia-1.4b-deduped": ("gpt_neox", dict(_PYTHIA, hidden_size=2048, num_hidden_layers=24,
                                                        num_attention_heads=16, intermediate_size=8192)),
    "EleutherAI/pythia-2.8b-deduped": ("gpt_neox", dict(_PYTHIA, hidden_size=2560, num_hidden_layers=32,
                                                        num_attention_heads=32, intermediate_size=10240)),
    "microsoft/deberta-v3-base": ("deberta-v2", dict(_DEBERTA_V3, hidden_size=768, num_hidden_layers=12,
                                                     num_attention_heads=12, intermediate_size=3072, pooler_hidden_size=768)),
    "microsoft/deberta-v3-large": ("deberta-v2", dict(_DEBERTA_V3, hidden_size=1024, num_hidden_layers=24,
                                                      num_attention_heads=16, intermediate_size=4096, pooler_hidden_size=1024)),
}


def shape_config(name: str):
    """The transformers config of a model in ``SHAPES``."""
    from transformers import DebertaV2Config, GPTNeoXConfig

    if name not in SHAPES:
        raise SystemExit(f"error: --random-weights knows the shapes of {', '.join(SHAPES)}, not {name!r}")
    kind, fields = SHAPES[name]
    return GPTNeoXConfig(**fields) if kind == "gpt_neox" else DebertaV2Config(**fields)


def build_random_model(name: str, tokenizer, out_dir: Path, device: str) -> Path:
    """``name``'s architecture with random weights and ``tokenizer``, saved (fp16 on a GPU) to ``out_dir``."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    if (out_dir / "config.json").exists():
        return out_dir
    config = shape_config(name)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    auto = AutoModelForCausalLM if config.model_type == "gpt_neox" else AutoModel
    with torch.device(device):
        model = auto.from_config(config)
    if device == "cuda":
        model = model.half()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    return out_dir


def stage_overrides(profile, args, models: dict[str, Path]) -> dict[str, list[str]]:
    """``--set`` arguments per stage: the shortened run, and the local models and data under --random-weights."""
    short = {
        SFT: [f"max_steps={args.sft_steps}", "logging_steps=1", "eval_steps=0", "max_eval_conversations=16",
                   "sample_prompts=1"],
        REWARD: [f"max_train_pairs={args.reward_pairs}", "max_eval_pairs=64", "max_hh_pairs=64"],
        PPO: [f"updates={args.ppo_updates}", "checkpoint_every=0", "resume=false", "n_compare_prompts=1"],
        DPO: [f"max_train_pairs={args.dpo_pairs}", "max_eval_pairs=32", "save_steps=0", "n_compare_prompts=1"],
        RLOO: [f"updates={args.rloo_updates}", "kl_curve_points=2", "save_steps=0", "n_compare_prompts=1"],
    }
    if args.random_weights:
        for stage, key in ((SFT, "base_model"), (REWARD, "base_model")):
            short[stage].append(f"{key}={models[profile.stage_params(stage)[key]]}")
        for stage in (SFT, REWARD, PPO, RLOO):  # DPO has no data parameters: it rebuilds stage 03's pairs
            short[stage].append(f"train_paths={json.dumps(OFFLINE_TRAIN_PATHS)}")
    return short


def run_stage(stage: str, profile_name: str, run_dir: Path, overrides: list[str], cap: float | None) -> dict[str, Any]:
    name = next(script for script, folder in STAGES.items() if folder == stage)
    cmd = [sys.executable, "-m", "recipes.train", name, "--profile", profile_name, "--run-dir", str(run_dir)]
    cmd += [a for o in overrides for a in ("--set", o)]
    if cap:
        cmd += ["--max-gpu-memory-gib", str(cap)]
    log = run_dir / f"{stage}.log"
    started = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"error: stage {stage} failed (exit {code}); the end of {log}:\n{tail}")
    metrics = json.loads((run_dir / stage / "metrics.json").read_text())
    metrics["wall_seconds"] = time.time() - started
    return metrics


def table_rows(profile, metrics: dict[str, dict[str, Any]], args) -> list[dict[str, Any]]:
    sft, reward, ppo, dpo, rloo = (dict(profile.stage_params(s)) for s in (SFT, REWARD, PPO, DPO, RLOO))
    for stage, params in ((SFT, sft), (REWARD, reward), (PPO, ppo), (DPO, dpo), (RLOO, rloo)):
        params.update(metrics.get(stage, {}).get("parameters", {}))  # what the stage ran with, --set included
    rows = []
    if SFT in metrics:
        m = metrics[SFT]
        batch, accum = sft.get("per_device_train_batch_size"), sft.get("gradient_accumulation_steps")
        rows.append({"stage": "02 SFT", "model": f"{profile.stage_params('02_sft')['base_model']} ({m['quantization']}) + LoRA",
                     "ran": f"{args.sft_steps} steps of {batch} × {accum} threads ≤ {sft.get('max_length')} tokens",
                     "speed": f"{m['tokens_per_second']:,.0f} tokens/s; {m['train_seconds'] / args.sft_steps:.2f} s/step",
                     "m": m})
    if REWARD in metrics:
        m = metrics[REWARD]
        rows.append({"stage": "03 reward", "model": f"{profile.stage_params('03_reward')['base_model']} + LoRA",
                     "ran": f"{m['pairs_train']} pairs ≤ {reward.get('max_length')} tokens, batch {reward.get('batch_size')}",
                     "speed": f"{m['pairs_train'] / m['train_seconds']:,.1f} pairs/s", "m": m})
    if PPO in metrics:
        m = metrics[PPO]
        rows.append({"stage": "04 PPO", "model": f"{profile.stage_params('02_sft')['base_model']} policy + value head",
                     "ran": f"{m['updates']} updates of {ppo.get('batch_size')} prompts × {ppo.get('replies_per_prompt')} replies, "
                            f"≤ {ppo.get('max_new_tokens')} new tokens",
                     "speed": f"{m['seconds_per_update']:,.1f} s/update", "m": m})
    if DPO in metrics:
        m = metrics[DPO]
        rows.append({"stage": "04 DPO", "model": f"{profile.stage_params('02_sft')['base_model']} policy + reference adapter",
                     "ran": f"{m['train_pairs']} pairs in {m['steps']} steps of {dpo.get('batch_size')} × {dpo.get('grad_accum')} "
                            f"pairs ≤ {dpo.get('max_length')} tokens",
                     "speed": f"{m['train_pairs'] / m['train_seconds']:,.2f} pairs/s", "m": m})
    if RLOO in metrics:
        m = metrics[RLOO]
        rows.append({"stage": "04 RLOO", "model": f"{profile.stage_params('02_sft')['base_model']} policy + reference adapter",
                     "ran": f"{m['updates']} updates of {rloo.get('prompts_per_update')} prompts × {rloo.get('replies_per_prompt')} "
                            f"replies, ≤ {rloo.get('max_new_tokens')} new tokens",
                     "speed": f"{m['seconds_per_update']:,.1f} s/update", "m": m})
    return rows


def markdown(profile, rows: list[dict[str, Any]], args) -> str:
    cap = f"{args.max_gpu_memory_gib:g} GiB (torch allocator cap)" if args.max_gpu_memory_gib else "none"
    lines = [f"### `{profile.name}` on a GPU, measured {time.strftime('%Y-%m-%d')}", "",
             f"Machine: {machine()}. Memory cap: {cap}. "
             + ("Random weights of the profile's architectures (`--random-weights`): speed and memory only."
                if args.random_weights else "The profile's own models."), "",
             "| stage | model | ran | speed | peak GPU memory allocated / reserved (MiB) | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        m = r["m"]
        memory = f"{m['peak_memory_mb']:,.0f} / {m.get('gpu_peak_reserved_mb', float('nan')):,.0f}"
        lines.append(f"| {r['stage']} | {r['model']} | {r['ran']} | {r['speed']} | {memory} | {m['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu_profile", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="colab-t4")
    ap.add_argument("--max-gpu-memory-gib", type=float, help="cap torch's allocator: 15 for a 16 GB T4, 23 for a 24 GB card")
    ap.add_argument("--random-weights", action="store_true", help="no model hub: random weights of the profile's architectures")
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--reward-pairs", type=int, default=256)
    ap.add_argument("--ppo-updates", type=int, default=3)
    ap.add_argument("--dpo-pairs", type=int, default=64)
    ap.add_argument("--rloo-updates", type=int, default=3)
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="STAGE:KEY=VALUE",
                    help="try a setting before writing it into the profile, e.g. 02_sft:per_device_train_batch_size=8")
    ap.add_argument("--stages", nargs="+", default=list(STAGES.values()), choices=list(STAGES.values()))
    args = ap.parse_args(argv)

    import torch

    profile = load_profile(args.profile)
    run_dir = REPO_ROOT / "runs" / "bench" / f"{profile.name}-gpu"
    run_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {}
    if args.random_weights:
        from utils.oasst import load_split, message_texts
        from utils.model.tiny_base import train_tokenizer

        data = profile.stage_params(SFT)
        split = load_split(OFFLINE_TRAIN_PATHS, data["heldout_paths"], lang=data["lang"],
                           eval_fraction=data["eval_fraction"], seed=data["seed"])
        tokenizer = train_tokenizer(message_texts(split.train), vocab_size=8192)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for stage in (SFT, REWARD):
            name = profile.stage_params(stage)["base_model"]
            models[name] = build_random_model(name, tokenizer, run_dir / "models" / name.replace("/", "--"), device)
    overrides = stage_overrides(profile, args, models)
    for item in args.extra:
        stage, sep, setting = item.partition(":")
        if not sep or stage not in overrides:
            raise SystemExit(f"error: --set {item!r}: expected STAGE:KEY=VALUE with STAGE one of {', '.join(overrides)}")
        overrides[stage].append(setting)
    metrics = {}
    for stage in args.stages:
        metrics[stage] = run_stage(stage, str(profile.path), run_dir, overrides[stage], args.max_gpu_memory_gib)
        print(f"{stage}: {json.dumps({k: v for k, v in metrics[stage].items() if not isinstance(v, (list, dict))}, default=str)}", flush=True)
    write_table(f"{profile.name}-gpu", markdown(profile, table_rows(profile, metrics, args), args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
