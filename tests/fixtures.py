"""Small models and tokenizers that several test modules share: one recipe each, imported from here.

A test module imports what it needs (``from fixtures import tiny_gpt_neox``) rather than from another test
module. The word-level tokenizer and its conversation live in ``test_chat_format.py``, beside the ids its
tests write out by hand; they are re-exported here.
"""

from __future__ import annotations

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from test_chat_format import CONVERSATION, word_tokenizer  # noqa: F401 (re-exported)

__all__ = ["CONVERSATION", "tiny_gpt_neox", "word_tokenizer"]


def tiny_gpt_neox(vocab_size: int, seed: int = 0, **config) -> GPTNeoXForCausalLM:
    """A random 2-layer GPT-NeoX of width 32 (Pythia's architecture, as the tiny base): milliseconds a step.

    ``config`` overrides any :class:`GPTNeoXConfig` field (heads, init range, positions, EOS and padding ids).
    The seed is set before the weights are drawn: the same arguments give the same model.
    """
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=128) | config
    return GPTNeoXForCausalLM(GPTNeoXConfig(**settings))
