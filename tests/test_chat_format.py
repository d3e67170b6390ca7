"""The conversation format: exact ids and assistant mask, round trips, and chat-template tokenizers.

Expected ids are written out by hand from a word-level vocabulary whose pieces we chose, so they do not
depend on the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures import CONVERSATION, EXPECTED_IDS, EXPECTED_MASK, word_tokenizer
from utils.model import chat_format
from utils.model.tiny_base import train_tokenizer

def test_oa_ids_and_mask_cover_exactly_the_replies_and_their_end_of_turn():
    enc = chat_format.encode(CONVERSATION, word_tokenizer())
    assert enc.input_ids == EXPECTED_IDS
    assert enc.assistant_mask == EXPECTED_MASK


def test_generation_prompt_and_bos():
    tok = word_tokenizer()
    prompt = CONVERSATION[:4]
    assert chat_format.encode_prompt(prompt, tok) == EXPECTED_IDS[:16] + [3]
    enc = chat_format.encode(CONVERSATION[1:3], tok, add_bos=True)
    assert enc.input_ids == [2, 6, 7, 0, 3, 8, 0]  # no BOS (nor CLS) token: nothing to prepend
    tok.bos_token = "<|endoftext|>"  # Pythia's convention
    enc = chat_format.encode(CONVERSATION[1:3], tok, add_bos=True)
    assert (enc.input_ids, enc.assistant_mask) == ([0, 2, 6, 7, 0, 3, 8, 0], [0, 0, 0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="end with a user turn"):
        chat_format.encode_prompt(CONVERSATION, tok)


def test_unknown_role_is_named():
    with pytest.raises(ValueError, match="turn 1: unknown role 'bot'"):
        chat_format.encode([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], word_tokenizer())


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer like the tiny base's, trained on a few sentences."""
    tok = train_tokenizer(["Hello there! How are you today?", "Fine, thanks. Ünïcödé and emoji 🙂 too."] * 20, 300)
    assert chat_format.add_special_tokens(tok) == 0  # the chat tokens are already in its vocabulary
    return tok


def test_masked_tokens_decode_to_the_replies(bpe):
    enc = chat_format.encode(CONVERSATION, bpe)
    masked = [i for i, m in zip(enc.input_ids, enc.assistant_mask) if m]
    assert bpe.decode(masked) == "hello<|endoftext|>fine thanks<|endoftext|>"


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: "<|" not in s and s.strip() == s
)


@settings(max_examples=40, deadline=None)
@given(user=texts, reply=texts)
def test_round_trip_render_encode_decode(bpe, user, reply):
    tok = bpe
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    enc = chat_format.encode(messages, tok)
    assert tok.decode(enc.input_ids) == chat_format.render(messages, tok)
    assert chat_format.render(messages, tok) == f"<|prompter|>{user}<|endoftext|><|assistant|>{reply}<|endoftext|>"
    reply_ids = enc.input_ids[len(chat_format.encode_prompt(messages[:1], tok)):]
    assert chat_format.decode_reply(reply_ids, tok) == reply
    assert chat_format.split_prompt_reply(messages) == (messages[:1], reply)


def test_chat_template_is_used_and_mask_covers_replies(chatml):
    assert chat_format.add_special_tokens(chatml) == 0
    messages = CONVERSATION[1:]
    text = chat_format.render(messages, chatml)
    assert text == (
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nhow are you<|im_end|>\n<|im_start|>assistant\nfine thanks<|im_end|>\n"
    )
    enc = chat_format.encode(messages, chatml)
    assert chatml.decode(enc.input_ids) == text
    runs = chat_format.assistant_spans(enc, chatml)
    # Each reply and the end-of-turn token that closes it; not the newline ChatML writes after that token,
    # which generation (stopping at <|im_end|>) never produces.
    assert runs == ["hello<|im_end|>", "fine thanks<|im_end|>"]
    prompt_ids = chat_format.encode_prompt(messages[:1], chatml)
    assert chatml.decode(prompt_ids) == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert chat_format.stop_token_ids(chatml) == [chatml.convert_tokens_to_ids("<|im_end|>")]
