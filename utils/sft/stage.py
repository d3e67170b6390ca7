"""Stage 02 in steps: the notebook (``notebooks/02_sft.ipynb``) and the script (``python -m recipes.train sft``) call
the same steps in the same order, :func:`load_data`, :func:`load_base`, :func:`encode`, :func:`load_model`,
:func:`make_trainer`, :func:`~utils.sft.training.train_sft`, :func:`save`, and :func:`stage_metrics`, the one writer
of its metrics.json. Every step reads its settings from :class:`utils.sft.params.SFTParams`."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from utils.sft.params import TINY_BASE, SFTParams


@dataclass
class SFTData:
    """Step 1, :func:`load_data`: the split, the training threads chosen (``select_sft``) and the eval split's threads."""

    split: Any
    selection: Any  # utils.oasst.SFTSelection: the threads and how many each filter removed
    train_conversations: list
    eval_conversations: list  # at most max_eval_conversations of ...
    eval_available: int  # ... this many

    @property
    def data_skipped(self) -> dict[str, int]:
        return self.split.report.as_dict()["skipped"]  # records the readers skipped (on_error: skip), by reason


def load_data(params: SFTParams) -> SFTData:
    from utils.oasst import select_sft, sft_conversations

    split = params.load_split()
    selection = select_sft(split.train, top_k=params.sft_top_k, max_spam=params.max_spam, max_red_flag=params.max_red_flag,
                           min_quality=params.min_quality)
    evals = sft_conversations(split.eval)  # every eval thread, whatever the selection: one yardstick for every choice
    return SFTData(split, selection, selection.conversations, evals[: params.max_eval_conversations], len(evals))


@dataclass
class SFTBase:
    """Step 2, :func:`load_base`: where the base is (a path or a hub name), its tokenizer, and for the tiny base the
    report of its pretraining and whether it came from the cache."""

    path: str | Path
    tokenizer: Any
    report: dict | None = None
    cached: bool | None = None


# The tiny base's first build with the default settings (tokenizer, then 300 steps of 8 x 256 tokens): 177 s on 2 cores
# (AMD EPYC, AVX2, 2026-12-07). The profiles' measured times leave it out: it happens once per cache.
TINY_BASE_BUILD_SECONDS = 180.0


def first_build(params: dict[str, Any], root: Path) -> tuple[str, float] | None:
    """What a run of stage 02 with ``params`` (resolved, as the runner holds them) builds before its own work, and
    about how many seconds that takes on 2 cores: the tiny base when ``base_cache_dir`` (relative to ``root``) holds
    no finished build with these ``tiny_base`` settings; else None. Read from the builds' reports without torch, so
    the runner can ask; a build from other data with the same settings counts as found (the cache key also hashes
    the texts). A GGUF's conversion (about 20 s) and a hub download are not counted."""
    if params.get("base_model") != "tiny":
        return None
    wanted = dict(params.get("tiny_base") or {})
    cache = Path(params.get("base_cache_dir") or "runs/cache")
    cache = cache if cache.is_absolute() else root / cache
    for report in cache.glob("tiny-gpt-neox-*/tiny_base.json"):  # the report is written last: its folder is whole
        try:
            config = json.loads(report.read_text()).get("config", {})
        except (OSError, ValueError):
            continue
        if all(config.get(k) == v for k, v in wanted.items()):
            return None

    def tokens(settings: dict[str, Any]) -> int:  # what pretraining reads: its time goes with it
        return settings["steps"] * settings["batch_size"] * settings["block_size"]

    return "the tiny base", TINY_BASE_BUILD_SECONDS * tokens({**TINY_BASE, **wanted}) / tokens(TINY_BASE)


def load_base(params: SFTParams, data: SFTData, device: Any,
              build_first: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> SFTBase:
    """``base_model = "tiny"``: build the offline GPT-NeoX base from the training trees' messages, or find it cached
    (``build_first``: a context in which one process builds while the others wait); else a hub name or a path."""
    from utils.model.modeling import load_tokenizer
    from utils.oasst import message_texts
    from utils.model.tiny_base import TinyBaseConfig, build_tiny_base

    path, report, cached = params.base_model, None, None
    if params.base_model == "tiny":
        with build_first():
            base = build_tiny_base(message_texts(data.split.train), message_texts(data.split.eval), TinyBaseConfig(**params.tiny_base),
                                   cache_dir=params.base_cache_dir, device=device)
        path, report, cached = base.path, base.report, base.cached
    return SFTBase(path, load_tokenizer(path, trust_remote_code=params.trust_remote_code), report, cached)


def encode(params: SFTParams, data: SFTData, tokenizer) -> tuple[Any, Any]:
    """Step 3: ``(train set, eval set)``, the threads as token ids with the loss mask, cut to ``max_length``."""
    from utils.sft.data import encode_conversations

    return (encode_conversations(data.train_conversations, tokenizer, params.max_length),
            encode_conversations(data.eval_conversations, tokenizer, params.max_length))


def load_model(params: SFTParams, base: SFTBase, device: Any):
    """Step 4: the base (4-bit NF4 with ``quantization = "nf4"``) with fresh LoRA adapters; peak memory counts from here."""
    from utils.model.modeling import load_causal_lm, reset_peak_memory
    from utils.sft.training import add_lora

    reset_peak_memory()
    model = load_causal_lm(base.path, params.quantization, device, trust_remote_code=params.trust_remote_code,
                           tokenizer=base.tokenizer)
    return add_lora(model, base.tokenizer, params)


def make_trainer(params: SFTParams, model, tokenizer, train_set, eval_set, run_dir: str | Path, out_dir: str | Path):
    """Step 5: trl's SFTTrainer, its checkpoints (``save_steps``) in ``<run_dir>/checkpoints/02_sft``. Then
    :func:`~utils.sft.training.train_sft`."""
    from utils.pipeline import stages
    from utils.sft.training import make_trainer as sft_trainer

    return sft_trainer(model, tokenizer, train_set.dataset, eval_set.dataset, params, out_dir,
                       stages.checkpoint_dir(run_dir, stages.SFT))


def save(params: SFTParams, trainer, base: SFTBase, out_dir: str | Path) -> tuple[Path, Path | None]:
    """Step 6: ``(adapter_dir, merged_dir)``: the adapter with its tokenizer, and with ``merge`` the base with the
    adapter folded into its full-precision weights."""
    from utils.sft.model import ADAPTER_DIR, MERGED_DIR, merge_adapter, save_adapter

    adapter_dir = save_adapter(trainer.model, base.tokenizer, Path(out_dir) / ADAPTER_DIR)
    merged_dir = None
    if params.merge:
        merged_dir = merge_adapter(base.path, adapter_dir, Path(out_dir) / MERGED_DIR, params.trust_remote_code)
    return adapter_dir, merged_dir


def stage_metrics(
    out_dir: str | Path,
    params: SFTParams,
    data: SFTData,
    base: SFTBase,
    stats: Any,
    *,
    train_set: Any,
    eval_set: Any,
    parameters: tuple[int, int],
    adapter_dir: str | Path,
    merged_dir: str | Path | None = None,
    peak_memory_mb: float | None = None,
    device: Any = None,
    processes: int = 1,
    started: float | None = None,
) -> dict[str, Any]:
    """What stage 02 records, the same whether a notebook or a script ran it.

    ``base_model_dir`` is a path relative to the stage folder when the base lives inside it, absolute for a
    cached build (the tiny base, a converted GGUF), and the name as given for a hub name or ``gguf:`` source.
    """
    from utils.pipeline.artifacts import record_path

    trainable, total = parameters
    return {
        "eval_loss_before": stats.eval_loss_before,
        "eval_loss_after": stats.eval_loss_after,
        "train_loss_first": stats.train_loss_first,
        "train_loss_last": stats.train_loss_last,
        "train_losses": [loss for _, loss in stats.curves["train"]],
        "quantization": params.quantization,
        "trainable_params": trainable,
        "total_params": total,
        "tokens_per_second": stats.tokens_per_second,
        "train_seconds": stats.train_seconds,
        "train_tokens": stats.tokens_seen,
        "peak_memory_mb": peak_memory_mb,
        "adapter_dir": record_path(out_dir, adapter_dir),
        "base_model_dir": record_path(out_dir, base.path) if Path(base.path).exists() else str(base.path),
        "merged_dir": record_path(out_dir, merged_dir) if merged_dir else None,
        "base_heldout_perplexity": base.report["heldout_perplexity"] if base.report else None,
        "unigram_heldout_perplexity": base.report["unigram_perplexity"] if base.report else None,
        "train_conversations": len(train_set.dataset),
        "eval_conversations": len(eval_set.dataset),
        "sft_selection": data.selection.counts,
        "data_skipped": data.data_skipped,
        "device": str(device) if device is not None else None,
        "processes": processes,
        **({"seconds": time.time() - started} if started is not None else {}),
    }
