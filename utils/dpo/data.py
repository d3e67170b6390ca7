"""DPO's data: preference pairs in trl's conversational format, tokenized by the kit's chat format and fitted into
the window (module notes 2 and 3 of :mod:`utils.dpo`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from utils.model import chat_format


def conversational_record(pair) -> dict[str, Any]:
    """A pair in trl's conversational preference format."""
    return {"prompt": chat_format.normalize(pair.prompt),
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


def record_markdown(record: dict[str, Any]) -> str:
    """A record of :func:`conversational_record` as a reader sees it: each field, each turn with its role, its line
    breaks kept (a quote per turn)."""
    def turns(messages: Sequence[dict[str, str]]) -> str:
        return "\n\n".join(f"*{m['role']}*:\n\n" + "\n".join("> " + line for line in (m["content"].splitlines() or [""]))
                           for m in messages)

    return "\n\n".join(f"**{field}**\n\n{turns(record[field])}" for field in ("prompt", "chosen", "rejected"))


def encode_reply(prompt: Sequence[dict[str, str]], reply: Sequence[dict[str, str]], tokenizer) -> tuple[list[int], list[int]]:
    """``(prompt ids, reply ids)``: the prompt as the policy sees it when generating (the assistant tag last), and
    the reply's tokens up to and including its end-of-turn token (a template's text after that is never generated)."""
    full = chat_format.encode(list(prompt) + list(reply), tokenizer)
    prompt_ids = chat_format.encode_prompt(prompt, tokenizer)
    if full.input_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat format does not render the prompt as a prefix of the conversation")
    trained = [i for i, m in enumerate(full.assistant_mask) if m]
    end = trained[-1] + 1 if trained else len(full.input_ids)
    return prompt_ids, full.input_ids[len(prompt_ids) : end]


@dataclass
class EncodedPairs:
    """Tokenized pairs (trl's ``prompt_ids``, ``chosen_ids``, ``rejected_ids``) and what the window cut."""

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    context_cut: int = 0  # pairs whose context lost its oldest tokens
    reply_cut: int = 0  # pairs with a reply cut at its end

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids})

    def summary(self) -> dict[str, int]:
        tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids))
        return {"pairs": len(self), "context_cut": self.context_cut, "reply_cut": self.reply_cut, "tokens": tokens}


def encode_pairs(pairs: Sequence, tokenizer, max_length: int) -> EncodedPairs:
    """Each pair, through :func:`conversational_record` and the chat format, fitted into ``max_length`` tokens."""
    out = EncodedPairs([], [], [])
    for i, pair in enumerate(pairs):
        record = conversational_record(pair)
        try:
            prompt, chosen = encode_reply(record["prompt"], record["chosen"], tokenizer)
            _, rejected = encode_reply(record["prompt"], record["rejected"], tokenizer)
        except ValueError as e:
            raise ValueError(f"pair {i}: {e}") from None
        keep = min(len(prompt), max(max_length - max(len(chosen), len(rejected)), max_length // 2))
        room = max_length - keep
        out.context_cut += keep < len(prompt)
        out.reply_cut += max(len(chosen), len(rejected)) > room
        out.prompt_ids.append(prompt[len(prompt) - keep :])
        out.chosen_ids.append(chosen[:room])
        out.rejected_ids.append(rejected[:room])
    return out
