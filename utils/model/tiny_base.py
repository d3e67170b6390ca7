"""A small GPT-NeoX base model, built offline from the training split's text.

The offline profile can download nothing, so it makes its own stand-in for Pythia (Biderman et al., 2023,
https://arxiv.org/abs/2304.01373), the model family OpenAssistant fine-tuned:

1. a byte-level BPE tokenizer (GPT-2's scheme, as Pythia's) trained on the training split's messages,
   with the chat special tokens of :mod:`utils.model.chat_format` in its vocabulary;
2. a GPT-NeoX of a few million parameters with Pythia's architecture choices (rotary embeddings on a
   quarter of each head, parallel attention and MLP residual, untied input and output embeddings);
3. plain next-token pretraining on the same text, a fixed number of seeded steps, nanoGPT style: random
   windows of the token stream, AdamW, warmup then cosine decay. Steps decide what is trained, never the
   clock: the same text, config and seed give the same model on a fast machine and on a busy one.

Only the training split is read: the evaluation trees give the held-out perplexity, reported next to a
unigram model's (token frequencies of the training text), the simplest baseline a language model must
beat. The result is a standard Hugging Face directory, cached under a hash of text and config, so the
second run (and every later stage) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from utils.model import chat_format
from utils.model.modeling import default_device

# Bump when the recipe below changes, so that cached models built by an older recipe are not reused.
# 2: no wall-clock cap (version 1 could cache a build the cap had cut short).
RECIPE_VERSION = 2
REPORT_FILE = "tiny_base.json"
SPECIAL_TOKENS = [chat_format.END_OF_TURN_TOKEN, chat_format.PAD_TOKEN, *chat_format.OA_SPECIAL_TOKENS]


@dataclass
class TinyBaseConfig:
    """Size and pretraining budget of the tiny base (the defaults take about 3 minutes on 2 CPU cores)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    context_length: int = 512  # positions the model accepts (SFT's max_length must fit)
    block_size: int = 256  # tokens per pretraining window
    batch_size: int = 8
    steps: int = 300
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    eval_every: int = 100
    seed: int = 0


@dataclass
class TinyBase:
    """A built (or cached) tiny base: its directory and what pretraining measured."""

    path: Path
    cached: bool
    report: dict = field(default_factory=dict)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``texts``, the chat special tokens first in the vocabulary (ids 0-4)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=chat_format.END_OF_TURN_TOKEN,  # Pythia's convention: one token is BOS, EOS and end of turn
        eos_token=chat_format.END_OF_TURN_TOKEN,
        pad_token=chat_format.PAD_TOKEN,
        extra_special_tokens=list(chat_format.OA_SPECIAL_TOKENS),
    )


def token_stream(texts: Sequence[str], tokenizer) -> torch.Tensor:
    """All texts as one stream of ids, each text followed by the end-of-text token (GPT-style documents)."""
    eot = tokenizer.eos_token_id
    ids: list[int] = []
    for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids += row + [eot]
    return torch.tensor(ids, dtype=torch.long)


def unigram_nll(train: torch.Tensor, heldout: torch.Tensor, vocab_size: int, block_size: int) -> float:
    """Mean negative log-likelihood of ``heldout`` under add-one smoothed training token frequencies.

    Scored on exactly the tokens :func:`stream_nll` scores (all but the first of each window).
    """
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    targets = torch.cat([w[1:] for w in heldout.split(block_size)])
    return float(-log_p[targets].mean())


@torch.no_grad()
def stream_nll(model, stream: torch.Tensor, block_size: int, batch_size: int = 16) -> float:
    """Mean next-token negative log-likelihood over consecutive windows of ``stream`` (the last may be short)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    *full, last = stream.split(block_size)
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches.append(last[None])  # the last window, maybe shorter, on its own
    total, count = 0.0, 0
    for batch in batches:
        if batch.shape[1] < 2:
            continue
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="sum"))
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def _model_config(config: TinyBaseConfig, tokenizer) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=4 * config.hidden_size,
        max_position_embeddings=config.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},  # Pythia's
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _lr_at(step: int, config: TinyBaseConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak (nanoGPT's schedule)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: GPTNeoXForCausalLM, train: torch.Tensor, heldout: torch.Tensor, config: TinyBaseConfig, log=print
) -> dict:
    """Next-token training on random windows of ``train``; returns the loss curves and what was run. A line goes to
    ``log`` every tenth of the steps (minutes on a CPU: the cell that builds the base is never silent)."""
    from utils.model.modeling import Countdown

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on biases and norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    # [step, loss] pairs as lists, the form they take in the saved JSON report
    train_curve: list[list] = []
    eval_curve: list[list] = [[0, stream_nll(model, heldout, config.block_size)]]
    start, step = time.perf_counter(), 0
    countdown, every = Countdown(config.steps, "steps", out=log), max(1, config.steps // 10)
    model.train()
    while step < config.steps:
        offsets = torch.randint(0, len(train) - config.block_size - 1, (config.batch_size,), generator=gen)
        x = torch.stack([train[o : o + config.block_size + 1] for o in offsets.tolist()]).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # transformers shifts labels by one itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        train_curve.append([step, loss.item()])
        if step % every == 0 or step == config.steps:
            countdown.tick(f"tiny base: pretraining, training loss {loss.item():.2f}", parts=step - countdown.done)
        if step % config.eval_every == 0 and step < config.steps:
            eval_curve.append([step, stream_nll(model, heldout, config.block_size)])
    seconds = time.perf_counter() - start
    eval_curve.append([step, stream_nll(model, heldout, config.block_size)])
    return {
        "steps_done": step,
        "train_seconds": seconds,
        "train_tokens": step * config.batch_size * config.block_size,
        "train_curve": train_curve,
        "eval_curve": eval_curve,
    }


def cache_key(train_texts: Sequence[str], eval_texts: Sequence[str], config: TinyBaseConfig) -> str:
    h = hashlib.sha256(json.dumps({"recipe": RECIPE_VERSION, **asdict(config)}, sort_keys=True).encode())
    for name, texts in (("train", train_texts), ("eval", eval_texts)):
        h.update(f"\0{name}:{len(texts)}\0".encode())
        for t in texts:
            h.update(t.encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


def build_tiny_base(
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    config: TinyBaseConfig | None = None,
    cache_dir: str | Path = "runs/cache",
    device: torch.device | str | None = None,
    log=print,
) -> TinyBase:
    """Train tokenizer and model on ``train_texts``, score on ``eval_texts``; reuse the cached one if any. ``log``
    receives a line every tenth of the pretraining."""
    config = config or TinyBaseConfig()
    if not train_texts or not eval_texts:
        raise ValueError(f"the tiny base needs training and held-out text (got {len(train_texts)} and {len(eval_texts)} texts)")
    if config.block_size > config.context_length:
        raise ValueError(f"tiny_base: block_size {config.block_size} exceeds context_length {config.context_length}")
    path = Path(cache_dir) / f"tiny-gpt-neox-{cache_key(train_texts, eval_texts, config)}"
    if (path / REPORT_FILE).exists():  # written last: a directory with a report is a complete build
        return TinyBase(path, cached=True, report=json.loads((path / REPORT_FILE).read_text()))

    device = torch.device(device) if device is not None else default_device()
    tokenizer = train_tokenizer(train_texts, config.vocab_size)
    train, heldout = token_stream(train_texts, tokenizer), token_stream(eval_texts, tokenizer)
    tokenizer.model_max_length = config.context_length  # after streaming: the streams are longer on purpose
    if len(train) <= config.block_size + 1:
        raise ValueError(f"tiny_base: {len(train)} training tokens, fewer than one block of {config.block_size}")

    torch.manual_seed(config.seed)
    model = GPTNeoXForCausalLM(_model_config(config, tokenizer)).to(device)
    run = pretrain(model, train, heldout, config, log=log)
    nll = run["eval_curve"][-1][1]
    unigram = unigram_nll(train, heldout, len(tokenizer), config.block_size)
    report = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "train_stream_tokens": len(train),
        "heldout_tokens": len(heldout),
        "heldout_perplexity": math.exp(nll),
        "unigram_perplexity": math.exp(unigram),
        **run,
    }

    # Write next to the final place, then rename: a crash or a concurrent build never leaves half a model.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished the same build first: theirs is as good, keep it
        shutil.rmtree(tmp, ignore_errors=True)
    return TinyBase(path, cached=False, report=report)


def plot_pretraining(report: dict, path: str | Path | None = None):
    """Train and held-out loss of pretraining, with the unigram baseline as a line to beat."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if report["train_curve"]:  # empty with steps=0
        steps, losses = zip(*report["train_curve"])
        ax.plot(steps, losses, lw=1, alpha=0.7, label="train (batch)")
    steps, losses = zip(*report["eval_curve"])
    ax.plot(steps, losses, "o-", label="held-out")
    ax.axhline(math.log(report["unigram_perplexity"]), color="gray", ls="--", label="unigram baseline (held-out)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="Tiny base pretraining")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
