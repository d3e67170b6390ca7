"""Perplexity on held-out SFT threads: the assistant tokens only, each reply's end-of-turn token included."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from utils.model import chat_format
from utils.evaluate.kl import masked_logprob_sums

Conversation = list[dict[str, Any]]

def perplexity(model, tokenizer, conversations: Sequence[Conversation], batch_size: int = 8,
               max_length: int | None = None) -> tuple[float, int]:
    """``(perplexity, tokens)`` over the assistant tokens of ``conversations``.

    A conversation longer than ``max_length`` tokens (None: the model's context) keeps its first tokens; the
    tokens cut are not counted. Measuring at the length SFT trained at costs a fraction of a long context: a
    batch's logits grow with its longest thread times the vocabulary.
    """
    limit = min(getattr(model.config, "max_position_embeddings", None) or 10**9, max_length or 10**9)
    encoded = [chat_format.encode(c, tokenizer) for c in conversations]
    sequences = [e.input_ids[:limit] for e in encoded]
    masks = [e.assistant_mask[:limit] for e in encoded]
    total = masked_logprob_sums(model, sequences, masks, tokenizer.pad_token_id, batch_size).sum()
    count = sum(sum(m[1:]) for m in masks)  # the first token has nothing to be predicted from
    return (float(np.exp(-total / count)) if count else float("nan")), count
