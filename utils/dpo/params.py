"""Stage 04_dpo's parameters, each default written here once (the notebook's parameters cell is generated from this).

No data parameters: DPO trains on stage 03's pairs, rebuilt from the parameters stage 03 ran with (its record), so the
two stages cannot split the data differently."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from utils.params import Params, param


@dataclass
class DPOParams(Params):
    """DPO (Rafailov et al., 2023) on the proxy's preference pairs: trl's DPOTrainer on the SFT adapter."""

    seed: int = param(0, "the seed of training and of the replies sampled for comparison")
    quantization: Literal["nf4", "none"] | None = param(None, 'None: as stage 02 trained (its metrics say); or "nf4" / "none"')
    beta: float = param(0.1, "the KL leash: smaller lets the policy move further from SFT")
    loss_type: str = param("sigmoid", 'trl\'s loss: "sigmoid" is DPO; "ipo", "hinge", ... are its variants')
    learning_rate: float = param(5e-4, "peak learning rate (linear warmup, then linear decay)")
    epochs: float = param(1.0, "passes over the training pairs")
    max_steps: int = param(-1, "> 0 overrides epochs")
    batch_size: int = param(8, "pairs per forward pass (each pair: two sequences, and two more for the reference)")
    grad_accum: int = param(1, "forward passes per optimizer step: batch_size x grad_accum pairs a step")
    warmup: float = param(0.1, "fraction of the steps")
    max_length: int = param(256, "tokens of prompt and reply; the context is cut from the left, the reply keeps its start")
    gradient_checkpointing: bool = param(False, "trade compute for activation memory (GPU profiles)")
    max_train_pairs: int | None = param(None, "None: every pair of the proxy's trees")
    max_eval_pairs: int | None = param(200, "per held-out set (None: all); 200 keeps tiny's evaluation passes to about a minute")
    eval_batch_size: int = param(16, "pairs per forward pass when measuring the implicit rewards")
    logging_steps: int | None = param(None, "None: about 20 points on the training curve")
    save_steps: int = param(0, "> 0: a checkpoint every save_steps steps in <run_dir>/checkpoints/04_dpo; a killed run resumes")
    n_compare_prompts: int = param(4, "held-out prompts answered by SFT and by DPO")
    compare_max_new_tokens: int = param(48, "their length")

    def training(self) -> dict[str, Any]:
        """What decides the trained adapter, which a checkpoint must match to be resumed."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("save_steps", "max_eval_pairs", "eval_batch_size", "n_compare_prompts", "compare_max_new_tokens")}
