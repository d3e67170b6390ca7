"""The one conversation format of the kit: SFT, reward model, PPO and evaluation all encode through here.

A conversation is a list of ``{"role": "user" | "assistant" | "system", "content": str}`` dicts, the
conversational format trl and transformers use. OASST's role name ``prompter`` is accepted for ``user``.

Two encodings:

* **OpenAssistant style**, for tokenizers without a chat template (Pythia, the kit's own tiny base,
  encoders such as MiniLM or DeBERTa used as reward backbones)::

      <|prompter|>Hi<|endoftext|><|assistant|>Hello!<|endoftext|>

  which is what OpenAssistant's Pythia SFT models were trained on. Each turn is tokenized on its own
  and the pieces concatenated, so the token ids (and the assistant mask) are exact, with no merge
  across a turn boundary.

* **The tokenizer's own chat template**, where it has one (Llama-3-Instruct, Qwen, ...). The assistant
  mask comes from rendering growing prefixes of the conversation: the tokens added by an assistant turn,
  minus the generation prompt that precedes it, are that turn's tokens.

The assistant mask marks the tokens a model is trained to produce: each assistant reply and the
end-of-turn token that closes it (so the model learns to stop), never the role tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

PROMPTER_TOKEN = "<|prompter|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
END_OF_TURN_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"

OA_SPECIAL_TOKENS = (PROMPTER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN)
ROLE_TAGS = {"user": PROMPTER_TOKEN, "assistant": ASSISTANT_TOKEN, "system": SYSTEM_TOKEN}
ROLE_ALIASES = {"prompter": "user", "human": "user", "user": "user", "assistant": "assistant", "system": "system"}

Message = dict[str, str]


@dataclass
class Encoded:
    """Token ids of a conversation and, per token, 1 where the token belongs to an assistant reply."""

    input_ids: list[int]
    assistant_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def normalize(messages: Iterable[dict[str, Any]]) -> list[Message]:
    """Return ``[{role, content}]`` with canonical role names; raises ValueError naming the bad turn."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        role = ROLE_ALIASES.get(str(m.get("role", "")).lower())
        if role is None:
            raise ValueError(f"turn {i}: unknown role {m.get('role')!r} (expected user, assistant or system)")
        content = m.get("content", m.get("text"))
        if not isinstance(content, str):
            raise ValueError(f"turn {i}: content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def add_special_tokens(tokenizer) -> int:
    """Give a template-less tokenizer the OpenAssistant role tokens, an end-of-turn and a pad token.

    Returns how many tokens were added: call ``model.resize_token_embeddings(len(tokenizer))`` when it is
    not 0. Tokenizers with a chat template are left alone: their template already has its own tokens.
    """
    if uses_chat_template(tokenizer):
        return 0
    special: dict[str, Any] = {}
    missing = [t for t in OA_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        special["extra_special_tokens"] = missing
    if tokenizer.eos_token is None and tokenizer.sep_token is None:
        special["eos_token"] = END_OF_TURN_TOKEN
    if tokenizer.pad_token is None:
        special["pad_token"] = PAD_TOKEN
    if not special:
        return 0
    # Extend, not replace, any extra special tokens the tokenizer already has.
    return tokenizer.add_special_tokens(special, replace_extra_special_tokens=False)


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn in OpenAssistant style: the tokenizer's EOS if it has one.

    Encoders (BERT-like reward backbones) have no EOS; their SEP plays the part.
    """
    return tokenizer.eos_token or tokenizer.sep_token or END_OF_TURN_TOKEN


def render(messages: Sequence[dict[str, Any]], tokenizer, add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as :func:`encode` tokenizes it (for display and debugging)."""
    messages = normalize(messages)
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    eot = end_of_turn_token(tokenizer)
    text = "".join(f"{ROLE_TAGS[m['role']]}{m['content']}{eot}" for m in messages)
    return text + (ASSISTANT_TOKEN if add_generation_prompt else "")


def encode(
    messages: Sequence[dict[str, Any]],
    tokenizer,
    add_generation_prompt: bool = False,
    add_bos: bool = False,
) -> Encoded:
    """Token ids and assistant mask of a conversation.

    ``add_generation_prompt`` appends the assistant tag, ready for the model to write the next reply.
    ``add_bos`` prepends the tokenizer's BOS (or CLS for encoders), which sequence classifiers expect.
    """
    messages = normalize(messages)
    if uses_chat_template(tokenizer):
        enc = _encode_with_template(messages, tokenizer, add_generation_prompt)
    else:
        enc = _encode_oa(messages, tokenizer, add_generation_prompt)
    if add_bos:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        if bos is not None and (not enc.input_ids or enc.input_ids[0] != bos):
            enc = Encoded([bos] + enc.input_ids, [0] + enc.assistant_mask)
    return enc


def encode_prompt(messages: Sequence[dict[str, Any]], tokenizer) -> list[int]:
    """Ids of a conversation that ends with a user turn, followed by the assistant tag to generate from."""
    messages = normalize(messages)
    if messages and messages[-1]["role"] == "assistant":
        raise ValueError("a prompt must end with a user turn; drop the trailing assistant reply first")
    return encode(messages, tokenizer, add_generation_prompt=True).input_ids


def _token_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token!r} token: call utils.model.chat_format.add_special_tokens(tokenizer) first")
    return tid


def _encode_oa(messages: list[Message], tokenizer, add_generation_prompt: bool) -> Encoded:
    eot_id = _token_id(tokenizer, end_of_turn_token(tokenizer))
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        tag_id = _token_id(tokenizer, ROLE_TAGS[m["role"]])
        body = tokenizer(m["content"], add_special_tokens=False)["input_ids"]
        trained = 1 if m["role"] == "assistant" else 0
        ids += [tag_id] + body + [eot_id]
        mask += [0] + [trained] * (len(body) + 1)
    if add_generation_prompt:
        ids.append(_token_id(tokenizer, ASSISTANT_TOKEN))
        mask.append(0)
    return Encoded(ids, mask)


def _encode_with_template(messages: list[Message], tokenizer, add_generation_prompt: bool) -> Encoded:
    def ids_of(prefix: list[Message], gen_prompt: bool) -> list[int]:
        if not prefix:
            return []
        out = tokenizer.apply_chat_template(prefix, tokenize=True, add_generation_prompt=gen_prompt, return_dict=False)
        return list(out["input_ids"] if isinstance(out, dict) else out)

    full = ids_of(messages, add_generation_prompt)
    mask = [0] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(ids_of(messages[:i], True))
        end = len(ids_of(messages[: i + 1], False))
        if full[:end][:start] != ids_of(messages[:i], True)[:start]:
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot build an assistant mask")
        # The turn ends at its end-of-turn token: what a template writes after it (ChatML's "\n") is never
        # generated, since generation stops at that token, so it is not trained on either.
        turn = full[start:end]
        if tokenizer.eos_token_id in turn:
            end = start + turn.index(tokenizer.eos_token_id) + 1
        for j in range(start, min(end, len(full))):
            mask[j] = 1
    return Encoded(full, mask)


def assistant_spans(encoded: Encoded, tokenizer) -> list[str]:
    """The text of each run of tokens the assistant mask covers: what the loss trains on, reply by reply."""
    spans, run = [], []
    for token, trained in zip(encoded.input_ids + [None], encoded.assistant_mask + [0]):
        if trained:
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans


def decode_reply(token_ids: Sequence[int], tokenizer) -> str:
    """Text of a generated reply: stops at the first end-of-turn token, drops special tokens."""
    eot = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)) if not uses_chat_template(tokenizer) else tokenizer.eos_token_id
    ids = list(token_ids)
    if eot is not None and eot in ids:
        ids = ids[: ids.index(eot)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generated reply (passed to ``generate`` as ``eos_token_id``)."""
    ids = {tokenizer.eos_token_id}
    if not uses_chat_template(tokenizer):
        ids.add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
    return sorted(i for i in ids if i is not None)


def split_prompt_reply(messages: Sequence[dict[str, Any]]) -> tuple[list[Message], str]:
    """``(conversation up to the last user turn, last assistant reply)`` of a conversation ending in a reply."""
    messages = normalize(messages)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("conversation does not end with an assistant reply")
    return messages[:-1], messages[-1]["content"]
