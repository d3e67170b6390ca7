"""One copy of the base weights with the run's adapters beside it: :func:`use` switches between them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from utils.pipeline.artifacts import StageNotRun, read_metrics, stage_path
from utils.pipeline.stages import DPO, PPO, RLOO, SFT

BASE = "base"  # the model with no adapter

@dataclass
class Models:
    """The base model with the run's adapters loaded by name ("sft", "ppo", "dpo", ...); ``names`` lists the models."""

    model: Any
    tokenizer: Any
    names: list[str]
    sources: dict[str, str]  # name -> where it came from, for the record

    @property
    def context(self) -> int | None:
        """How many tokens (prompt and reply) the model reads at most."""
        return getattr(self.model.config, "max_position_embeddings", None)


ALIGNED = {"ppo": PPO, "dpo": DPO, "rloo": RLOO}  # model name -> the stage that trains it on top of SFT (loaded when it ran)


def load_models(run_dir: str | Path, quantization: str | None = None, device: str | None = None) -> Models:
    """Base (from stage 02's ``base_model_dir``), the SFT adapter and, where stages 04_ppo and 04_dpo ran, theirs.

    ``quantization`` defaults to the one SFT trained with: the adapters were fitted to those weights.
    """
    from peft import PeftModel

    from utils.sft.model import load_sft_base

    base, tokenizer, sft_dir = load_sft_base(run_dir, quantization, device)
    model = PeftModel.from_pretrained(base, str(sft_dir), adapter_name="sft")
    names, sources = [BASE, "sft"], {BASE: read_metrics(run_dir, SFT)["base_model_dir"], "sft": str(sft_dir)}
    for name, stage in ALIGNED.items():
        try:
            adapter_dir = stage_path(run_dir, stage, "adapter_dir")
        except StageNotRun:
            continue  # that stage has not run: the others are evaluated without it (the notebook says so)
        model.load_adapter(str(adapter_dir), adapter_name=name)
        names.append(name)
        sources[name] = str(adapter_dir)
    model.eval()
    return Models(model, tokenizer, names, sources)


@contextmanager
def use(models: Models, name: str) -> Iterator[Any]:
    """The shared model acting as ``name``: ``"base"`` with adapters off, else that adapter on."""
    if name not in models.names:
        raise KeyError(f"no model {name!r}; loaded: {models.names}")
    if name == BASE:
        with models.model.disable_adapter():
            yield models.model
    else:
        models.model.set_adapter(name)
        yield models.model
