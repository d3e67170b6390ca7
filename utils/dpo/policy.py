"""The SFT adapter as a trainable policy and, in trl's copy named ``"ref"``, the frozen reference, on one base in memory
(module note 4 of :mod:`utils.dpo`). Stage 04_rloo builds its policy the same way."""

from __future__ import annotations

from pathlib import Path

POLICY = "default"  # peft writes the adapter named "default" at the top of a folder: what stage 05 loads
REFERENCE = "ref"  # the name trl gives the frozen copy of a PEFT model's adapter


def load_policy(run_dir: str | Path, quantization: str | None = None, device=None):
    """``(peft model, tokenizer, SFT adapter dir)``: stage 02's base once, its adapter as the trainable policy."""
    from peft import PeftModel

    from utils.sft.model import load_sft_base

    base, tokenizer, adapter_dir = load_sft_base(run_dir, quantization, device)
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=POLICY, is_trainable=True)
    return model, tokenizer, adapter_dir


def as_reference(model):
    """Within the block the peft model is π_ref, the SFT policy (its frozen ``"ref"`` adapter active)."""
    from trl.trainer.utils import use_adapter

    return use_adapter(model, REFERENCE)


def restore_sft_weights(model, sft_adapter_dir: str | Path) -> None:
    """Policy and reference both exactly the saved SFT adapter; the policy trainable in float32, the reference frozen."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(sft_adapter_dir), device=str(next(model.parameters()).device))
    for name, p in model.named_parameters():
        if f".{REFERENCE}." in name or name.endswith(f".{REFERENCE}"):
            p.requires_grad_(False)
        elif p.requires_grad:
            p.data = p.data.float()
    for adapter in (POLICY, REFERENCE):
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{sft_adapter_dir} does not match the {adapter!r} adapter: unexpected keys {result.unexpected_keys[:3]}")


def sft_as_reference(trainer, sft_adapter_dir: str | Path) -> None:
    """A trl trainer built on a peft model without ``peft_config`` (DPO's, RLOO's): its ``"ref"`` copy of the adapter
    is there, and both adapters hold exactly the saved SFT weights, the reference frozen (see the module's note 4)."""
    if REFERENCE not in trainer.model.peft_config:
        raise RuntimeError("trl made no reference adapter: this trl version handles PEFT models otherwise")
    restore_sft_weights(trainer.model, sft_adapter_dir)


def save_policy(model, tokenizer, path: str | Path) -> Path:
    """The trained policy as a plain peft adapter folder (stage 05 loads it beside SFT's on the same base)."""
    model.save_pretrained(str(path), selected_adapters=[POLICY])
    tokenizer.save_pretrained(str(path))
    return Path(path)


def save_trained_policy(trainer, tokenizer, out_dir: str | Path) -> Path:
    """A trl trainer's policy as a plain peft adapter folder, ``<out_dir>/adapter``: stages 04_dpo's and 04_rloo's last
    step (stage 05 loads it beside SFT's on the same base)."""
    return save_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, Path(out_dir) / "adapter")
