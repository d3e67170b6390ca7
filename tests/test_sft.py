"""QLoRA SFT: labels from the assistant mask, truncation accounting, a short run that learns, saving/merging."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from fixtures import CONVERSATION, EXPECTED_IDS, EXPECTED_MASK, FAST, word_model_dir, word_tokenizer
from utils.model import chat_format
from utils.sft.data import chat_token_ids, encode_conversations, heldout_prompts, show_mask
from utils.sft.model import load_sft_base, load_sft_model, merge_adapter, save_adapter
from utils.sft.training import add_lora, make_trainer, train_sft
from utils.pipeline.artifacts import write_metrics
from utils.model.modeling import load_causal_lm, load_tokenizer
from utils.oasst import load_split, message_texts, sft_conversations
from utils.model.tiny_base import TinyBaseConfig, build_tiny_base

REPO = Path(__file__).resolve().parent.parent
def test_labels_are_the_assistant_tokens_only(tmp_path):
    """trl builds labels from our assistant_masks: the reply ids where the mask is 1, -100 elsewhere."""
    base = word_model_dir(tmp_path)
    tok = load_tokenizer(base)
    data = encode_conversations([CONVERSATION], tok, max_length=64)
    model = add_lora(load_causal_lm(base, "nf4", "cpu", tokenizer=tok), tok, FAST)
    trainer = make_trainer(model, tok, data.dataset, data.dataset, FAST, tmp_path / "out")
    row = trainer.train_dataset[0]
    assert row["input_ids"] == EXPECTED_IDS
    # By hand: hello=8, eot=0 after the first <|assistant|>; fine=12 thanks=13 eot=0 after the second.
    assert row["labels"] == [-100] * 9 + [8, 0] + [-100] * 6 + [12, 13, 0]
    assert [label != -100 for label in row["labels"]] == [bool(m) for m in EXPECTED_MASK]


def test_packing_keeps_each_conversation_whole_and_its_mask(tmp_path):
    base = word_model_dir(tmp_path)
    tok = load_tokenizer(base)
    data = encode_conversations([CONVERSATION] * 5, tok, max_length=64)
    settings = replace(FAST, packing=True, padding_free=True, max_length=32)
    model = add_lora(load_causal_lm(base, "nf4", "cpu", tokenizer=tok), tok, settings)
    trainer = make_trainer(model, tok, data.dataset, data.dataset, settings, tmp_path / "out")
    rows = trainer.train_dataset
    assert len(rows) == 5 and all(len(r["input_ids"]) == 20 for r in rows)  # 20-token conversations: none fits beside another in 32
    for r in rows:
        for token, label in zip(r["input_ids"], r["labels"]):
            assert label in (-100, token)
    assert sum(label != -100 for r in rows for label in r["labels"]) == 5 * sum(EXPECTED_MASK)


def test_packing_that_would_run_conversations_together_is_refused():
    """trl's packing without padding_free wraps: one conversation attends to the last and rows cut them."""
    with pytest.raises(ValueError, match="packing: true needs padding_free: true"):
        replace(FAST, packing=True, padding_free=False)


def test_truncation_and_drops_are_counted():
    tok = word_tokenizer()
    long_prompt = [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "hello"}]
    data = encode_conversations([CONVERSATION, long_prompt], tok, max_length=12)
    # CONVERSATION (20 tokens) is cut to 12, keeping "hello" + eot; the long prompt's reply is cut off entirely.
    assert data.summary() == {"conversations": 2, "truncated": 2, "dropped_no_reply_left": 1, "tokens": 12, "assistant_tokens": 2}
    assert data.dataset["input_ids"] == [EXPECTED_IDS[:12]]


def test_lora_targets_and_trainable_chat_rows(tmp_path):
    base = word_model_dir(tmp_path)
    tok = load_tokenizer(base)
    model = add_lora(load_causal_lm(base, "nf4", "cpu", tokenizer=tok), tok, FAST)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    for name in ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"):
        layer = dict(model.named_modules())[f"base_model.model.gpt_neox.layers.0.{'attention.' if name in ('query_key_value', 'dense') else 'mlp.'}{name}"]
        assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert chat_token_ids(tok) == [2, 3, 4]
    delta = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
    assert [tuple(p.shape) for p in delta] == [(3, 32)]  # three rows of the 32-wide input embedding


def test_chat_template_tokenizers_need_no_new_rows():
    from fixtures import CHATML
    from utils.model.tiny_base import train_tokenizer

    tok = train_tokenizer(["hi there", "hello"] * 5, 280)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    assert chat_token_ids(tok) == []
    data = encode_conversations([CONVERSATION[1:3]], tok, max_length=64)
    masked = [i for i, m in zip(data.dataset["input_ids"][0], data.dataset["assistant_masks"][0]) if m]
    assert tok.decode(masked) == "hello<|im_end|>\n"


def test_heldout_prompts_are_distinct_with_their_reference():
    a = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"}]
    b = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "two"}]
    c = [{"role": "user", "content": "how"}, {"role": "assistant", "content": "three"}]
    prompts, refs = heldout_prompts([a, b, c], 2)
    assert prompts == [a[:1], c[:1]] and refs == ["one", "three"]


def test_show_mask_brackets_the_replies():
    assert show_mask(CONVERSATION[1:3], word_tokenizer()) == "<|prompter|> hi there <|endoftext|> <|assistant|>⟦hello <|endoftext|>⟧"


@pytest.fixture(scope="module")
def oasst(tmp_path_factory):
    """A micro tiny base pretrained on the real training split, and the SFT conversations of both splits."""
    split = load_split([REPO / "data/oasst1_en_validation_messages.jsonl"], [REPO / "data/oasst_en_100_trees.jsonl"])
    cfg = TinyBaseConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, context_length=128,
                         block_size=64, batch_size=8, steps=60, learning_rate=3e-3, warmup_steps=6, eval_every=60)
    base = build_tiny_base(message_texts(split.train), message_texts(split.eval), cfg, cache_dir=tmp_path_factory.mktemp("cache"))
    return base.path, sft_conversations(split.train), sft_conversations(split.eval)[:16]


def test_short_qlora_run_lowers_heldout_loss_and_saves_a_reloadable_adapter(oasst, tmp_path):
    base, train_convs, eval_convs = oasst
    tok = load_tokenizer(base)
    settings = replace(FAST, max_steps=24, per_device_train_batch_size=4, learning_rate=3e-3, max_length=128,
                       lora_r=8, lora_alpha=16, logging_steps=4, eval_steps=12)
    train_set = encode_conversations(train_convs, tok, settings.max_length)
    eval_set = encode_conversations(eval_convs, tok, settings.max_length)
    model = add_lora(load_causal_lm(base, "nf4", "cpu", tokenizer=tok), tok, settings)
    trainer = make_trainer(model, tok, train_set.dataset, eval_set.dataset, settings, tmp_path)
    evaluations, evaluate = [], trainer.evaluate
    trainer.evaluate = lambda *a, **k: evaluations.append(1) or evaluate(*a, **k)
    stats = train_sft(trainer)
    assert stats.eval_loss_after < stats.eval_loss_before - 0.02  # measured: 4.985 -> 4.943
    assert [s for s, _ in stats.curves["eval"]] == [0, 12, 24]
    assert len(evaluations) == 3  # the loss after training is step 24's evaluation, not a fourth pass ...
    assert stats.eval_loss_after == pytest.approx(evaluate()["eval_loss"], abs=1e-6)  # ... and the same figure
    assert stats.tokens_seen > 24 * 4 * 10 and stats.tokens_per_second > 0

    adapter = save_adapter(trainer.model, tok, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists()
    write_metrics(tmp_path / "run/02_sft", {"adapter_dir": str(adapter.resolve()), "base_model_dir": str(Path(base).resolve())})
    reloaded, tok2 = load_sft_model(tmp_path / "run", "nf4", "cpu")
    ids = torch.tensor([chat_format.encode(eval_convs[0], tok).input_ids[:64]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-4)
    assert len(tok2) == len(tok)


def test_a_hub_name_as_base_is_loaded_by_name(tmp_path):
    """colab-t4 records a hub name as its base: later stages must ask the loader for that name, not a path."""
    base = word_model_dir(tmp_path / "base")
    tok = load_tokenizer(base)
    tok.save_pretrained(tmp_path / "run/02_sft/adapter")
    write_metrics(tmp_path / "run/02_sft", {"adapter_dir": "adapter", "base_model_dir": "EleutherAI/pythia-1.4b-deduped",
                                            "quantization": "nf4"})
    with pytest.raises(OSError, match=r"cannot load a causal LM from 'EleutherAI/pythia-1.4b-deduped'"):
        load_sft_base(tmp_path / "run")  # offline in the tests: the name reaches the loader, which cannot fetch it


def test_merged_model_equals_base_plus_adapter(tmp_path):
    base = word_model_dir(tmp_path / "base")
    tok = load_tokenizer(base)
    model = add_lora(load_causal_lm(base, "none", "cpu", tokenizer=tok), tok, FAST)
    with torch.no_grad():  # a non-zero adapter (B starts at zero) and non-zero chat-token rows
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    adapter = save_adapter(model, tok, tmp_path / "adapter")
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    ids = torch.tensor([EXPECTED_IDS])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = load_causal_lm(merged, "none", "cpu")(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not (merged / "adapter_config.json").exists()
