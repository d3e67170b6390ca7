"""The offline base model: tokenizer, baseline, pretraining, cache, and a standard Hugging Face directory."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from utils.model import chat_format
from utils.oasst import load_split, message_texts
from utils.model.tiny_base import (
    SPECIAL_TOKENS,
    TinyBaseConfig,
    _lr_at,
    build_tiny_base,
    stream_nll,
    train_tokenizer,
    unigram_nll,
)

REPO = Path(__file__).resolve().parent.parent
# Small enough to pretrain in seconds, big enough to beat a unigram model on real text.
MICRO = TinyBaseConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, context_length=128,
                       block_size=64, batch_size=8, steps=80, learning_rate=3e-3, warmup_steps=8, eval_every=40)


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    split = load_split([REPO / "data/oasst1_en_validation_messages.jsonl"], [REPO / "data/oasst_en_100_trees.jsonl"])
    return message_texts(split.train), message_texts(split.eval)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Hello there! How are you today?", "Fine, thanks: 3 × 4 = 12."] * 10, 300)


def test_chat_tokens_come_first_and_stay_whole(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = tokenizer("<|prompter|>Hi<|endoftext|><|assistant|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 2 and ids[-2:] == [0, 3]
    assert not chat_format.uses_chat_template(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|padding|>")


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60).filter(lambda s: "<|" not in s))
def test_byte_level_bpe_round_trips_any_text(tokenizer, text):
    """Every byte is in the vocabulary: text never seen in training (emoji, CJK, ...) survives unchanged."""
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_unigram_baseline_by_hand():
    # counts + 1 over a vocabulary of 3: token 0 -> 3, 1 -> 2, 2 -> 1, of 6. Windows of 2 over [1, 0, 2]:
    # [1, 0] scores its second token (0), [2] scores nothing.
    nll = unigram_nll(torch.tensor([0, 0, 1]), torch.tensor([1, 0, 2]), vocab_size=3, block_size=2)
    assert nll == pytest.approx(-math.log(3 / 6))


def test_a_uniform_model_scores_log_vocab():
    cfg = GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = GPTNeoXForCausalLM(cfg)
    model.get_output_embeddings().weight.data.zero_()  # every logit 0: p = 1/50 for every token
    assert stream_nll(model, torch.arange(37) % 50, block_size=8) == pytest.approx(math.log(50), abs=1e-5)


def test_warmup_then_cosine_to_a_tenth():
    cfg = TinyBaseConfig(learning_rate=1.0, warmup_steps=10, steps=110)
    assert _lr_at(0, cfg) == pytest.approx(0.1)
    assert _lr_at(9, cfg) == pytest.approx(1.0)
    assert _lr_at(60, cfg) == pytest.approx(0.55)  # halfway through the decay: 0.1 + 0.9 * 0.5
    assert _lr_at(110, cfg) == pytest.approx(0.1)


def test_builds_a_standard_directory_that_beats_unigram_and_is_cached(texts, tmp_path):
    train, heldout = texts
    lines = []
    base = build_tiny_base(train, heldout, MICRO, cache_dir=tmp_path, log=lines.append)
    assert not base.cached and base.report["steps_done"] == MICRO.steps
    # A line every tenth of the steps, the last at the end: the minutes of pretraining are never silent.
    every = max(1, MICRO.steps // 10)
    assert [line.split("(")[1].split(",")[0] for line in lines] == [
        f"{s} of {MICRO.steps} steps" for s in sorted({*range(every, MICRO.steps + 1, every), MICRO.steps})]
    assert lines[-1].startswith("tiny base: pretraining, training loss ") and lines[-1].endswith("about 0 s left)")
    assert base.report["heldout_perplexity"] < 0.8 * base.report["unigram_perplexity"]

    model = AutoModelForCausalLM.from_pretrained(base.path)
    tok = AutoTokenizer.from_pretrained(base.path)
    assert model.config.model_type == "gpt_neox" and model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert (base.path / "model.safetensors").exists()
    assert tok.convert_tokens_to_ids("<|assistant|>") == 3 and len(tok) == model.config.vocab_size
    ids = tok(heldout[0][:200], return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()

    again = build_tiny_base(train, heldout, MICRO, cache_dir=tmp_path)
    assert again.cached and again.path == base.path and again.report == base.report
    # Any change of text or settings is a different model.
    assert build_tiny_base(train, heldout[1:], replace(MICRO, steps=1), cache_dir=tmp_path).path != base.path


def test_seeded_builds_are_identical(texts, tmp_path):
    train, heldout = texts
    cfg = replace(MICRO, steps=10, eval_every=100)
    a = build_tiny_base(train[:300], heldout[:20], cfg, cache_dir=tmp_path / "a")
    b = build_tiny_base(train[:300], heldout[:20], cfg, cache_dir=tmp_path / "b")
    assert a.report["eval_curve"] == b.report["eval_curve"]
    wa = AutoModelForCausalLM.from_pretrained(a.path).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b.path).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_slow_machine_builds_the_same_model(texts, tmp_path, monkeypatch):
    """Steps decide what is trained, never the clock: a build on a machine 10 minutes per step behind is whole,
    and it is the model a fast machine builds (a 4-minute cap used to stop it early and cache it as if complete)."""
    import utils.model.tiny_base as tiny_base

    train, heldout = texts
    cfg = replace(MICRO, steps=6, eval_every=100)
    fast = build_tiny_base(train[:300], heldout[:20], cfg, cache_dir=tmp_path / "fast")
    clock = iter(range(0, 10**9, 600))  # every reading of the clock: 10 more minutes
    monkeypatch.setattr(tiny_base.time, "perf_counter", lambda: float(next(clock)))
    slow = build_tiny_base(train[:300], heldout[:20], cfg, cache_dir=tmp_path / "slow")
    assert slow.report["steps_done"] == fast.report["steps_done"] == 6
    assert slow.report["eval_curve"] == fast.report["eval_curve"]
    assert slow.path.name == fast.path.name  # the same cache key: the same recipe, text and config
    assert "max_minutes" not in TinyBaseConfig.__dataclass_fields__


def test_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="needs training and held-out text"):
        build_tiny_base(["some text"], [], MICRO, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="block_size 256 exceeds context_length 128"):
        build_tiny_base(["a"], ["b"], TinyBaseConfig(context_length=128, block_size=256), cache_dir=tmp_path)
