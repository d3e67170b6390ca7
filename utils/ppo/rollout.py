"""Rollouts for PPO: prompts in the kit's chat format, replies sampled from the policy, per-token log-probs.

A batch of rollouts is one tensor per sequence laid out as ``[left-padded prompt | reply | right padding]``.
Left padding lines the prompts up so that every reply starts at the same column; the reply ends at its first
stop token (kept: the policy has to learn when to stop) or at ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from utils.model.chat_format import decode_reply, encode_prompt, stop_token_ids

Conversation = list[dict[str, Any]]


@dataclass
class Rollout:
    """Sampled replies to a batch of prompts, with everything PPO needs to score and train on them."""

    prompts: list[Conversation]
    input_ids: torch.Tensor  # (B, P + R) prompt and reply tokens
    attention_mask: torch.Tensor  # (B, P + R) 1 on real tokens
    response_mask: torch.Tensor  # (B, R) 1 on reply tokens, the stop token included
    ended: torch.Tensor  # (B,) True where the reply ended with a stop token, False where max_new_tokens cut it
    replies: list[str]  # decoded replies, the text the reward model scores

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.response_mask.shape[1] :]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def model_inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(input_ids, attention_mask, reply columns)`` of ``rows``, cut to the columns where they have tokens.

        The whole batch is laid out for its longest prompt and longest reply; a few rows need only their own
        longest. Padding changes nothing a token attends to and positions count real tokens only, so the model
        gives every reply token of these rows what the full layout gives. The last token predicts nothing scored
        and is left out; the model's outputs cover the first ``reply columns`` reply positions (the rest of the
        rows' replies is padding).
        """
        columns = self.attention_mask[rows].any(0).nonzero().squeeze(1)
        start, end = int(columns[0]), int(columns[-1]) + 1  # the last prompt token and a reply's first are always tokens
        replied = end - (self.input_ids.shape[1] - self.response_mask.shape[1])
        return self.input_ids[rows, start : end - 1], self.attention_mask[rows, start : end - 1], replied


def encode_prompts(prompts: Sequence[Conversation], tokenizer, max_prompt_tokens: int) -> tuple[list[Conversation], list[list[int]], int]:
    """Token ids of each prompt; prompts longer than ``max_prompt_tokens`` are left out and counted.

    Cutting a conversation would drop its role tags or its question, so a long prompt is skipped, not truncated.
    Returns ``(kept prompts, their ids, how many were too long)``.
    """
    kept, ids, too_long = [], [], 0
    for prompt in prompts:
        enc = encode_prompt(prompt, tokenizer)
        if len(enc) > max_prompt_tokens:
            too_long += 1
            continue
        kept.append(prompt)
        ids.append(enc)
    return kept, ids, too_long


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample_rollout(
    model,
    tokenizer,
    prompts: Sequence[Conversation],
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Rollout:
    """Sample one reply per prompt from ``model`` (an :class:`~utils.ppo.model.ActorCritic`, policy adapter active)."""
    pad_id = tokenizer.pad_token_id
    stops = stop_token_ids(tokenizer)
    query, query_mask = left_pad(prompt_ids, pad_id, model.device)
    out = model.lm.generate(
        input_ids=query,
        attention_mask=query_mask,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
        # Sample from the policy's own distribution: a repetition penalty saved in the model's generation config
        # would make the rollout off-policy (its log-probs are not π's).
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        remove_invalid_values=True,  # a NaN policy then fails loudly at the log-prob check, not inside sampling
    )
    response = out[:, query.shape[1] :]
    # Each reply ends at its first stop token; what generate wrote after it is padding.
    is_stop = torch.isin(response, torch.tensor(stops, device=response.device))
    ended = is_stop.any(1)
    length = torch.where(ended, is_stop.int().argmax(1) + 1, response.shape[1])
    response_mask = (torch.arange(response.shape[1], device=response.device)[None] < length[:, None]).long()
    response = response.masked_fill(response_mask == 0, pad_id)
    replies = [decode_reply(r[:n].tolist(), tokenizer) for r, n in zip(response, length)]
    return Rollout(
        prompts=list(prompts),
        input_ids=torch.cat([query, response], 1),
        attention_mask=torch.cat([query_mask, response_mask], 1),
        response_mask=response_mask,
        ended=ended,
        replies=replies,
    )


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) under the temperature the tokens were sampled with."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def forward_in_chunks(model, rollout: Rollout, chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, values and entropies of the rollout's reply tokens from ``model`` (an ActorCritic), ``chunk`` rows at a time.

    Detail (speed): a rollout is laid out for the longest prompt and the longest reply of the whole batch, so
    much of it is padding. Rows go through the model in chunks of similar length (sorted by their number of
    tokens), each chunk cut to the columns where it has tokens (:meth:`Rollout.model_inputs`): every reply
    token gets what the full layout gives; positions after a reply's end that a chunk no longer reaches read
    0 (masked out everywhere they are used).
    """
    n, width = rollout.response_mask.shape
    logprobs, values, entropy = (torch.zeros(n, width, device=rollout.input_ids.device) for _ in range(3))
    order = torch.argsort(rollout.attention_mask.sum(1), stable=True)
    for first in range(0, n, chunk):
        rows = order[first : first + chunk]
        input_ids, attention_mask, replied = rollout.model_inputs(rows)
        logits, chunk_values = model(input_ids, attention_mask, replied)
        logprobs[rows, :replied] = token_logprobs(logits, rollout.response_ids[rows, :replied], temperature)
        values[rows, :replied] = chunk_values
        entropy[rows, :replied] = entropy_from_logits(logits, temperature)
    return logprobs, values, entropy


class PromptOrder:
    """Which prompts each update samples: passes over the prompt set, each pass in its own seeded order.

    A function of the update number alone, so a resumed run sees the prompts the uninterrupted one would have."""

    SEED_STRIDE = 100_003  # each pass's seed is seed x this + the pass: never the same as another seed's passes

    def __init__(self, n_prompts: int, batch_size: int, seed: int) -> None:
        self.n_prompts, self.batch_size, self.seed = n_prompts, batch_size, seed
        self._orders: dict[int, torch.Tensor] = {}

    def indices(self, update: int) -> list[int]:
        """The prompts of ``update`` (1, 2, ...), as indices into the prompt set."""
        picked = []
        for k in range((update - 1) * self.batch_size, update * self.batch_size):
            epoch, position = divmod(k, self.n_prompts)
            if epoch not in self._orders:
                generator = torch.Generator().manual_seed(self.seed * self.SEED_STRIDE + epoch)
                self._orders[epoch] = torch.randperm(self.n_prompts, generator=generator)
            picked.append(int(self._orders[epoch][position]))
        return picked
