"""The model PPO trains: one base model, a trainable policy adapter, a frozen reference, a value head.

* **policy**: a LoRA adapter (peft's adapter name ``"default"``) initialised from the SFT adapter, the only
  part of the language model that PPO changes.
* **reference** π_ref: the same SFT adapter loaded a second time under the name ``"reference"`` and frozen.
  Making it the active adapter for one forward pass turns the model into π_ref, so the base model (4-bit on
  a GPU) is in memory once, not twice. With no SFT adapter, the reference is the base with adapters off.
* **value head**: one linear layer on the policy's last hidden state, V(s_t) for every prefix s_t. It shares
  the policy's backbone (an actor-critic with a shared trunk, as in Ziegler et al. 2019 and trl's old
  ``AutoModelForCausalLMWithValueHead``), so one forward pass gives both log-probs and values.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn


POLICY = "default"  # peft writes the adapter named "default" at the top of a folder: what stage 05 loads
REFERENCE = "reference"

# LoRA on every linear layer of a GPT-NeoX block (Pythia and the kit's tiny base), for a policy with no SFT
# adapter to start from (tests, benchmarks).
GPT_NEOX_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: the log-probs of the rollout and of the PPO epochs must come from one function.

    With dropout on, the ratio π_new/π_old of an unchanged policy would not be 1 and the clipping would act on noise.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # attention dropout as a bare probability
            module.attention_dropout = 0.0


class ActorCritic(nn.Module):
    """A peft model with a policy adapter (and optionally a reference adapter), plus a value head."""

    def __init__(self, peft_model: PeftModel, has_reference_adapter: bool) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.has_reference_adapter = has_reference_adapter
        self.lm = peft_model.get_base_model()  # the transformers model, with the LoRA layers injected
        hidden_size = self.lm.config.get_text_config().hidden_size
        # The value head starts at zero: V ≡ 0 at first, so early advantages are the returns themselves rather
        # than noise from a random head. It stays in float32 whatever the base's compute dtype.
        self.value_head = nn.Linear(hidden_size, 1, device=self.lm.device, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        disable_dropout(self.peft_model)

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32) and values at the last ``num_positions`` positions of the sequences.

        Position ids count only real tokens, exactly as ``generate`` counts them for left-padded prompts, so the
        log-probs here are those of the distribution the rollout sampled from.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        hidden = hidden[:, -num_positions:]  # only these positions need the (vocabulary-sized) logits
        head = self.lm.get_output_embeddings()
        logits = head(hidden.to(head.weight.dtype)).float()
        values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values

    @contextmanager
    def as_reference(self) -> Iterator[None]:
        """Within the block the language model is π_ref (the frozen SFT adapter, or the bare base)."""
        if not self.has_reference_adapter:
            with self.peft_model.disable_adapter():
                yield
            return
        self.peft_model.set_adapter(REFERENCE, inference_mode=True)
        try:
            yield
        finally:
            self.peft_model.set_adapter(POLICY)  # makes the policy adapter trainable again, the reference stays frozen

    @contextmanager
    def policy_model(self) -> Iterator[nn.Module]:
        """The peft model acting as the policy (its adapter is the active one outside :meth:`as_reference`)."""
        yield self.peft_model

    @contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The peft model acting as π_ref for the block."""
        with self.as_reference():
            yield self.peft_model

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The policy adapter's weights and the value head's, for checkpoints."""
        state = {f"adapter.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(self.peft_model, adapter_name=POLICY).items()}
        state.update({f"value_head.{k}": v.detach().clone() for k, v in self.value_head.state_dict().items()})
        return state

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        adapter = {k.removeprefix("adapter."): v for k, v in state.items() if k.startswith("adapter.")}
        result = set_peft_model_state_dict(self.peft_model, adapter, adapter_name=POLICY)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint does not match the policy adapter: unexpected keys {result.unexpected_keys[:3]}")
        self.value_head.load_state_dict({k.removeprefix("value_head."): v for k, v in state.items() if k.startswith("value_head.")})

    def save_policy_adapter(self, path: str | Path) -> Path:
        """Save the policy as a standard peft adapter folder (loads with ``PeftModel.from_pretrained``)."""
        self.peft_model.save_pretrained(str(path), selected_adapters=[POLICY])
        return Path(path)


def build_actor_critic(
    base_model: nn.Module,
    sft_adapter_dir: str | Path | None = None,
    lora: LoraConfig | None = None,
    gradient_checkpointing: bool = False,
) -> ActorCritic:
    """Wrap a causal LM for PPO.

    With ``sft_adapter_dir`` the policy starts from the SFT adapter and the reference is that adapter, frozen.
    Without it, a fresh LoRA adapter (``lora``, GPT-NeoX defaults otherwise) is the policy and the base model,
    adapters disabled, is the reference; a fresh adapter's B matrices are zero, so policy = reference at start.
    """
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no gradient on the (frozen) input embeddings.
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if sft_adapter_dir is not None:
        sft_adapter_dir = Path(sft_adapter_dir)
        if not (sft_adapter_dir / "adapter_config.json").exists():
            raise FileNotFoundError(f"{sft_adapter_dir}: no adapter_config.json (is this the SFT stage's adapter_dir?)")
        peft_model = PeftModel.from_pretrained(base_model, str(sft_adapter_dir), adapter_name=POLICY, is_trainable=True)
        peft_model.load_adapter(str(sft_adapter_dir), adapter_name=REFERENCE, is_trainable=False)
        peft_model.set_adapter(POLICY)
        return ActorCritic(peft_model, has_reference_adapter=True)
    lora = lora or LoraConfig(task_type="CAUSAL_LM", **GPT_NEOX_LORA)
    return ActorCritic(get_peft_model(base_model, lora), has_reference_adapter=False)


def load_sft_policy(
    run_dir: str | Path,
    quantization: str | None = None,
    device: torch.device | str | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
) -> tuple[ActorCritic, object]:
    """``(actor-critic, tokenizer)`` from a finished 02_sft stage: its base (once), its adapter twice.

    ``quantization=None`` loads the base as SFT trained on it (its metrics say): the adapter was fitted to those weights.
    """
    from utils.sft.model import load_sft_base

    model, tokenizer, adapter_dir = load_sft_base(run_dir, quantization, device, trust_remote_code)
    return build_actor_critic(model, adapter_dir, gradient_checkpointing=gradient_checkpointing), tokenizer
