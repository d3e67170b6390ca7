"""Small models and tokenizers that several test modules share: one recipe each, imported from here.

A test module imports what it needs (``from fixtures import tiny_gpt_neox``) rather than from another test
module. The word-level tokenizer and its conversation live in ``test_chat_format.py``, beside the ids its
tests write out by hand; they are re-exported here.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from test_chat_format import CONVERSATION, word_tokenizer  # noqa: F401 (re-exported)

__all__ = ["CONVERSATION", "chat_word_tokenizer", "tiny_gpt_neox", "word_tokenizer"]


def tiny_gpt_neox(vocab_size: int, seed: int = 0, **config) -> GPTNeoXForCausalLM:
    """A random 2-layer GPT-NeoX of width 32 (Pythia's architecture, as the tiny base): milliseconds a step.

    ``config`` overrides any :class:`GPTNeoXConfig` field (heads, init range, positions, EOS and padding ids).
    The seed is set before the weights are drawn: the same arguments give the same model.
    """
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=128) | config
    return GPTNeoXForCausalLM(GPTNeoXConfig(**settings))


def chat_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """One id per word of ``words`` (id 0 unknown), with the kit's chat tokens added as a template-less base gets them
    (:func:`utils.chat_format.add_special_tokens`): replies of a tiny model are then words a test can count."""
    from utils.chat_format import add_special_tokens

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    add_special_tokens(hf)
    return hf
