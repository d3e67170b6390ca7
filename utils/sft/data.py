"""Stage 02's data: conversation threads as token ids with the mask of the tokens the loss covers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Sequence

from datasets import Dataset

from utils.model import chat_format


@dataclass
class EncodedSet:
    """Tokenized conversations and what happened to them on the way (nothing is dropped unsaid)."""

    dataset: Dataset
    conversations: int
    truncated: int
    dropped_no_reply_left: int
    tokens: int
    assistant_tokens: int

    def summary(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "dataset"}


def encode_conversations(conversations: Sequence[Sequence[dict]], tokenizer, max_length: int) -> EncodedSet:
    """``input_ids`` + ``assistant_masks`` for each conversation, cut to its first ``max_length`` tokens.

    A conversation whose cut leaves no assistant token (a very long prompt) teaches nothing and is dropped;
    both counts are returned.
    """
    rows: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    truncated = dropped = 0
    # Conversations longer than the model's context are expected here: they are cut below, and counted.
    # Mark the tokenizer's warn-once "sequence longer than the maximum" warning as already given.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    for conv in conversations:
        enc = chat_format.encode(conv, tokenizer)
        if len(enc) > max_length:
            truncated += 1
            enc = chat_format.Encoded(enc.input_ids[:max_length], enc.assistant_mask[:max_length])
        if not any(enc.assistant_mask):
            dropped += 1
            continue
        rows["input_ids"].append(enc.input_ids)
        rows["assistant_masks"].append(enc.assistant_mask)
    return EncodedSet(
        dataset=Dataset.from_dict(rows),
        conversations=len(conversations),
        truncated=truncated,
        dropped_no_reply_left=dropped,
        tokens=sum(map(len, rows["input_ids"])),
        assistant_tokens=sum(map(sum, rows["assistant_masks"])),
    )


def chat_token_ids(tokenizer) -> list[int]:
    """Ids of the OpenAssistant role tokens, the ones a template-less base has never been trained on."""
    if chat_format.uses_chat_template(tokenizer):
        return []
    return sorted(tokenizer.convert_tokens_to_ids(t) for t in chat_format.OA_SPECIAL_TOKENS)


def heldout_prompts(conversations: Sequence[Sequence[dict]], n: int) -> tuple[list[list[dict]], list[str]]:
    """The first ``n`` distinct prompts of ``conversations`` and the human reply each had (the reference)."""
    prompts, references, seen = [], [], set()
    for conv in conversations if n > 0 else ():
        prompt, reply = chat_format.split_prompt_reply(conv)
        key = json.dumps(prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
            references.append(reply)
        if len(prompts) == n:
            break
    return prompts, references


def show_mask(conversation: Sequence[dict], tokenizer, max_chars: int = 600) -> str:
    """The encoded conversation as text, the tokens the loss covers between ⟦ and ⟧."""
    enc = chat_format.encode(conversation, tokenizer)
    pieces = []
    for trained, run in groupby(zip(enc.input_ids, enc.assistant_mask), key=lambda pair: pair[1]):
        text = tokenizer.decode([token_id for token_id, _ in run])  # whole runs: multi-byte characters stay whole
        pieces.append(f"⟦{text}⟧" if trained else text)
    text = "".join(pieces)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
