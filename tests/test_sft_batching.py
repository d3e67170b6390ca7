"""SFT batching without padding: length-grouped batches and padding-free micro-batches.

A padding-free micro-batch lays its conversations end to end in one row, position ids restarting at each. The
claims tested here, on the kit's own trainer (trl's collator, transformers' mask creation, sdpa and eager
attention on the CPU): the trained tokens are exactly the assistant tokens, the loss is the padded batch's loss,
and a conversation never attends to the one before it.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from benchmarks.bench_padding import count_tokens, padding_share
from fixtures import CONVERSATION, FAST, word_model_dir
from utils.sft.data import encode_conversations
from utils.sft.model import save_adapter
from utils.sft.training import add_lora, make_trainer as sft_trainer, train_sft, trainer_config
from utils.model.modeling import load_causal_lm, load_tokenizer

# Four conversations of 20, 7, 11 and 6 tokens (see test_chat_format's vocabulary).
CONVERSATIONS = [
    CONVERSATION,
    CONVERSATION[1:3],
    CONVERSATION[:3],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine"}],
]


def make_trainer(tmp_path, settings, conversations=CONVERSATIONS, attn="sdpa", tokenizer_fn=None, checkpoint_dir=None):
    base = word_model_dir(tmp_path / "base")
    tok = load_tokenizer(base)
    if tokenizer_fn:
        tokenizer_fn(tok)
    data = encode_conversations(conversations, tok, max_length=64)
    model = load_causal_lm(base, "none", "cpu", tokenizer=tok)
    model.set_attn_implementation(attn)
    model = add_lora(model, tok, settings)
    return sft_trainer(model, tok, data.dataset, data.dataset, settings, tmp_path / "out", checkpoint_dir), data


def loss_of(trainer, batch) -> torch.Tensor:
    trainer.model.eval()  # LoRA dropout off: the same function on both layouts
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, trainer._prepare_inputs(dict(batch)))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_keeps_the_assistant_mask_and_the_padded_loss(tmp_path, attn):
    padded, data = make_trainer(tmp_path / "a", FAST, attn=attn)
    packed, _ = make_trainer(tmp_path / "b", replace(FAST, padding_free=True), attn=attn)
    examples = [padded.train_dataset[i] for i in range(len(CONVERSATIONS))]
    assert [packed.train_dataset[i]["input_ids"] for i in range(len(CONVERSATIONS))] == [e["input_ids"] for e in examples]
    pad_batch = padded.data_collator(examples)
    free_batch = packed.data_collator(examples)

    lengths = [len(e["input_ids"]) for e in examples]
    assert lengths == [20, 7, 11, 6]
    assert "attention_mask" not in free_batch and free_batch["input_ids"].shape == (1, sum(lengths))
    assert free_batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    # The trained tokens are the assistant tokens of each conversation, in order, and nothing else.
    masks = [m for conv in data.dataset["assistant_masks"] for m in conv]
    assert [label != -100 for label in free_batch["labels"][0].tolist()] == [bool(m) for m in masks]
    trained = free_batch["labels"][0][free_batch["labels"][0] != -100]
    assert trained.tolist() == pad_batch["labels"][pad_batch["labels"] != -100].tolist()
    assert count_tokens(pad_batch) == (sum(lengths), 4 * 20) and count_tokens(free_batch) == (sum(lengths), sum(lengths))

    assert torch.allclose(loss_of(packed, free_batch), loss_of(padded, pad_batch), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_conversations_do_not_attend_to_each_other(tmp_path, attn):
    """Whatever the first conversation of a packed row says, the loss on the second is the same."""
    trainer, _ = make_trainer(tmp_path, replace(FAST, padding_free=True), attn=attn)
    first, second = trainer.train_dataset[0], trainer.train_dataset[2]
    batch = trainer.data_collator([first, second])
    n = len(first["input_ids"])
    batch["labels"][0, :n] = -100  # the loss covers the second conversation only
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, :n] = torch.randint(5, 16, (n,), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loss_of(trainer, changed), loss_of(trainer, batch), atol=1e-6)
    # The control: positions that do not restart make one long sequence, and there the first conversation matters.
    one_sequence = {k: v for k, v in batch.items() if k not in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")}
    one_sequence["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    changed_one = dict(one_sequence, input_ids=changed["input_ids"])
    assert not torch.allclose(loss_of(trainer, changed_one), loss_of(trainer, one_sequence), atol=1e-4)


def test_padding_free_counts_every_token_even_where_pad_is_the_end_of_turn(tmp_path):
    """SmolLM2 pads with <|im_end|>, its end of turn: counting tokens unlike pad would miss each turn's end."""

    def pad_with_eos(tok):
        tok.pad_token = tok.eos_token

    settings = replace(FAST, padding_free=True, max_steps=2, per_device_train_batch_size=2, eval_steps=0)
    trainer, data = make_trainer(tmp_path, settings, [CONVERSATION] * 5, tokenizer_fn=pad_with_eos)
    stats = train_sft(trainer)
    assert stats.tokens_seen == 2 * 2 * len(data.dataset["input_ids"][0]) == 80


def test_padding_free_packing_keeps_conversations_whole_and_the_mask(tmp_path):
    settings = replace(FAST, packing=True, padding_free=True, max_length=32)
    trainer, data = make_trainer(tmp_path, settings, CONVERSATIONS * 2)
    rows = trainer.train_dataset
    assert all(len(r["input_ids"]) <= 32 and sum(r["seq_lengths"]) == len(r["input_ids"]) for r in rows)
    assert sorted(n for r in rows for n in r["seq_lengths"]) == sorted([20, 7, 11, 6] * 2)  # whole, none cut
    assert sum(label != -100 for r in rows for label in r["labels"]) == data.assistant_tokens
    batch = trainer.data_collator([rows[0], rows[1]])
    starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0]
    assert len(starts) == len(rows[0]["seq_lengths"]) + len(rows[1]["seq_lengths"])


def varied_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [[{"role": "user", "content": " ".join(["hi"] * rng.randint(1, 60))}, {"role": "assistant", "content": "fine thanks"}]
            for _ in range(n)]


def test_length_grouped_batches_hold_similar_lengths_and_every_conversation_once(tmp_path):
    convs = varied_conversations(64)
    settings = replace(FAST, per_device_train_batch_size=4, max_steps=16)
    shares = {}
    for grouped in (False, True):
        trainer, data = make_trainer(tmp_path / str(grouped), replace(settings, group_by_length=grouped), convs)
        batches = list(trainer.get_train_dataloader())
        shares[grouped] = padding_share(batches)
        seen = sorted(tuple(row[row != trainer.processing_class.pad_token_id].tolist()) for b in batches for row in b["input_ids"])
        assert seen == sorted(tuple(ids) for ids in data.dataset["input_ids"])  # an epoch: each conversation once
    # Sorted within megabatches of 16 here (transformers makes at least 4 per epoch): measured 0.11 against 0.29.
    assert shares[True] < shares[False] / 2, shares


def test_settings_reach_the_trainer_config():
    config = trainer_config(replace(FAST, group_by_length=True, padding_free=True), "/tmp/x", torch.device("cpu"))
    assert config.train_sampling_strategy == "group_by_length" and config.padding_free and config.max_length is None
    assert config.include_num_input_tokens_seen == "all"
    config = trainer_config(FAST, "/tmp/x", torch.device("cpu"))
    assert config.train_sampling_strategy == "random" and not config.padding_free and config.max_length == FAST.max_length
    assert (config.packing_strategy, config.include_num_input_tokens_seen) == ("wrapped", "non_padding")


def test_a_killed_length_grouped_padding_free_run_resumes_as_the_uninterrupted_one(tmp_path):
    """The length-grouped sampler draws its order from the seeded random state: a resumed run must see the rest of
    the same order (with conversations of one length, as test_resume has them, any order would pass)."""
    from safetensors.torch import load_file

    from fixtures import KillAfterSave, Killed

    convs = varied_conversations(24, seed=1)
    settings = replace(FAST, max_steps=4, per_device_train_batch_size=2, save_steps=1, logging_steps=1,
                       lora_dropout=0.1, learning_rate=5e-3, warmup_steps=0, group_by_length=True, padding_free=True)

    def attempt(name: str, checkpoints: str, kill_after: int | None = None):
        trainer, _ = make_trainer(tmp_path / name, settings, convs, checkpoint_dir=tmp_path / checkpoints)
        if kill_after:
            trainer.add_callback(KillAfterSave(kill_after))
        stats = train_sft(trainer)
        save_adapter(trainer.model, trainer.processing_class, tmp_path / name / "adapter")
        return stats, load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")

    whole, whole_weights = attempt("whole", "ck-whole")
    with pytest.raises(Killed):
        attempt("killed", "ck", kill_after=2)
    assert [p.name for p in (tmp_path / "ck").glob("*/checkpoint-*")] == ["checkpoint-2"]
    resumed, resumed_weights = attempt("killed", "ck")  # the same command again
    assert not list((tmp_path / "ck").glob("*/checkpoint-*"))  # resumed and finished
    assert len({loss for _, loss in whole.curves["train"]}) == 4
    assert [loss for _, loss in resumed.curves["train"]] == pytest.approx([loss for _, loss in whole.curves["train"]], abs=1e-6)
    for name, w in whole_weights.items():
        assert torch.allclose(resumed_weights[name], w, atol=1e-6), name


def test_every_benchmark_variant_sets_both_batching_settings():
    """The notebook's own defaults must not leak into a variant (a "padded" side that is length-grouped)."""
    from benchmarks.bench_padding import SFT_VARIANTS

    assert all(set(v) == {"group_by_length", "padding_free"} for v in SFT_VARIANTS.values())
    assert len({tuple(sorted(v.items())) for v in SFT_VARIANTS.values()}) == len(SFT_VARIANTS)
