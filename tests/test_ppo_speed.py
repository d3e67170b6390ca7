"""PPO's per-update forward passes on the rows' own widths give what the whole padded rollout gives."""

from __future__ import annotations

import torch

import pytest

from fixtures import PPO_WORDS, chat_word_tokenizer
from fixtures import ppo_config as small_config
from fixtures import ppo_lm as tiny_lm
from fixtures import ppo_prompts as prompts
from utils.ppo.trainer import PPOTrainer
from utils.ppo.model import build_actor_critic
from utils.ppo.rollout import Rollout, entropy_from_logits, token_logprobs


@pytest.fixture(scope="module")
def tokenizer():
    return chat_word_tokenizer(PPO_WORDS)


def padded_rollout(pad_id: int, prompt_lengths, reply_lengths, reply_width: int, vocab: int) -> Rollout:
    """Rows ``[left padding | prompt | reply | right padding]`` of random tokens, one per length pair."""
    g = torch.Generator().manual_seed(0)
    prompt_width = max(prompt_lengths)
    ids = torch.full((len(prompt_lengths), prompt_width + reply_width), pad_id)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompt_lengths, reply_lengths)):
        ids[i, prompt_width - p : prompt_width + r] = torch.randint(5, vocab, (p + r,), generator=g)
        mask[i, prompt_width - p : prompt_width + r] = 1
    response_mask = mask[:, prompt_width:]
    return Rollout(prompts=[[]] * len(ids), input_ids=ids, attention_mask=mask, response_mask=response_mask,
                   ended=response_mask.sum(1) < reply_width, replies=[""] * len(ids))


def test_forward_on_each_chunks_own_width_matches_the_full_layout(tokenizer):
    model = build_actor_critic(tiny_lm(tokenizer))
    torch.nn.init.normal_(model.value_head.weight)  # a head that starts at zero would hide a misplaced row
    trainer = PPOTrainer(model, tokenizer, prompts(), lambda p, r: [0.0] * len(r), small_config(mini_batch_size=2), log=None)
    rollout = padded_rollout(tokenizer.pad_token_id, [9, 2, 5, 3, 8, 2, 6], [1, 6, 3, 2, 6, 4, 1], 6, len(tokenizer))
    with torch.no_grad():
        logprobs, values, entropy = trainer._forward_batched(rollout)
        # What the full layout gives: every row through the model at once, padding and all.
        logits, full_values = model(rollout.input_ids[:, :-1], rollout.attention_mask[:, :-1], 6)
    full_logprobs = token_logprobs(logits, rollout.response_ids)
    full_entropy = entropy_from_logits(logits)
    replied = rollout.response_mask.bool()
    for ours, full in ((logprobs, full_logprobs), (values, full_values), (entropy, full_entropy)):
        assert ours.shape == full.shape == (7, 6)
        assert torch.allclose(ours[replied], full[replied], atol=1e-5)
        assert torch.isfinite(ours).all()
    assert not torch.allclose(values[replied], torch.zeros_like(values[replied]))  # the value head says something
    assert (logprobs[replied] < 0).all()


def test_each_chunk_is_cut_to_the_columns_where_its_rows_have_tokens(tokenizer):
    model = build_actor_critic(tiny_lm(tokenizer))
    trainer = PPOTrainer(model, tokenizer, prompts(), lambda p, r: [0.0] * len(r), small_config(mini_batch_size=2), log=None)
    rollout = padded_rollout(tokenizer.pad_token_id, [9, 2, 8, 3], [1, 2, 6, 6], 6, len(tokenizer))
    seen = []
    forward = model.forward
    model.forward = lambda ids, mask, n: seen.append((ids.shape[1], n)) or forward(ids, mask, n)
    with torch.no_grad():
        trainer._forward_batched(rollout)
    # Rows hold 10, 4, 14 and 9 tokens: chunks {2+2, 3+6} and {9+1, 8+6}. The first reaches back 3 prompt columns
    # and 6 reply columns (8 fed, the last token dropped), the second all 9 + 6 (14 fed): the full layout's width.
    assert seen == [(3 + 6 - 1, 6), (9 + 6 - 1, 6)], seen


def test_model_inputs_of_rows_cut_only_columns_without_tokens(tokenizer):
    rollout = padded_rollout(tokenizer.pad_token_id, [9, 2, 8, 3], [1, 2, 6, 6], 6, len(tokenizer))
    ids, mask, replied = rollout.model_inputs(torch.tensor([1, 3]))  # prompts of 2 and 3, replies of 2 and 6
    assert (ids.shape, replied) == ((2, 3 + 6 - 1), 6)
    assert torch.equal(ids, rollout.input_ids[[1, 3], 6:14]) and torch.equal(mask, rollout.attention_mask[[1, 3], 6:14])
    ids, mask, replied = rollout.model_inputs(torch.tensor([0, 1]))  # the longest prompt, replies of 1 and 2
    assert (ids.shape, replied) == ((2, 9 + 2 - 1), 2)
    assert mask.sum() == rollout.attention_mask[[0, 1]].sum() - 1  # the last column only: the longest reply's last token
