"""Stage 02's parameters, each default written here once (the notebook's parameters cell is generated from this)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from utils.params import DataParams, ParameterError, param

TINY_BASE = {"vocab_size": 4096, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "context_length": 512, "block_size": 256,
             "batch_size": 8, "steps": 300, "learning_rate": 0.002, "warmup_steps": 30, "weight_decay": 0.1, "eval_every": 100,
             "seed": 0}


@dataclass
class SFTParams(DataParams):
    """QLoRA SFT: which threads, which base, the LoRA adapter and trl's SFTTrainer settings, and what is shown after."""

    # Which threads SFT trains on. The defaults keep every usable thread, as the reference pipeline does
    # (OpenAssistant also trained on the best-ranked replies only, its "oasst-top1" configuration).
    sft_top_k: int | None = param(None, "1: SFT-top1, only threads whose ranked replies were all ranked best")
    max_spam: float | None = param(None, "drop threads with a message more than this share of labellers flagged as spam")
    max_red_flag: float | None = param(None, "the same for not_appropriate, pii, hate_speech, sexual_content")
    min_quality: float | None = param(None, "drop threads with a message whose mean quality label (0..1) is below this")
    max_eval_conversations: int | None = param(None, "None: all of the eval split's conversations")
    # The base model
    base_model: str = param("tiny", '"tiny": build the offline GPT-NeoX base; else a hub name or a local path')
    tiny_base: dict[str, Any] = param(TINY_BASE, "the tiny base's size and pretraining (utils/model/tiny_base.py, TinyBaseConfig)")
    base_cache_dir: str = param("runs/cache", "where built bases are kept and found again")
    trust_remote_code: bool = param(False, "let transformers run the base's own modelling code (models that need it)")
    quantization: Literal["nf4", "none"] = param("nf4", '"nf4": QLoRA\'s 4-bit base; "none": the base as it is stored')
    # LoRA (Hu et al., 2021)
    lora_r: int = param(16, "LoRA rank")
    lora_alpha: int = param(32, "LoRA scale (alpha / r multiplies the update)")
    lora_dropout: float = param(0.05, "dropout on LoRA's input")
    lora_target_modules: str | list[str] = param("all-linear", "or a list of module names")
    train_chat_token_embeddings: bool = param(True, "a base without a chat template learns its role tokens' embedding rows")
    # Training (trl's SFTTrainer)
    learning_rate: float = param(2e-3, "peak learning rate")
    lr_scheduler_type: str = param("cosine", "transformers' schedule after the warmup")
    warmup_steps: int | float = param(0.05, "an int counts steps, a float in [0, 1) is a fraction of them")
    weight_decay: float = param(0.0, "on the LoRA weights")
    num_train_epochs: float = param(1.0, "passes over the training threads")
    max_steps: int = param(60, "> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = param(8, "threads per micro-batch")
    gradient_accumulation_steps: int = param(1, "micro-batches per optimizer step")
    per_device_eval_batch_size: int = param(8, "threads per held-out batch")
    max_length: int = param(384, "tokens per thread; longer ones are cut (and counted)")
    packing: bool = param(False, "several threads per row (needs padding_free)")
    group_by_length: bool = param(
        True, "batches of threads of similar length: 2% padding instead of 25% here (benchmarks/bench_padding.py)")
    padding_free: bool = param(
        False, "one row per batch, no padding, attention kept inside each thread; slower on a CPU (bench_sft_batching)")
    logging_steps: int = param(5, "steps between training-loss points")
    eval_steps: int = param(20, "> 0: the held-out loss every eval_steps steps too (for the curve)")
    gradient_checkpointing: bool | None = param(None, "None: on where there is a GPU")
    save_steps: int = param(0, "> 0: a checkpoint every save_steps steps in <run_dir>/checkpoints/02_sft; a killed run resumes")
    merge: bool = param(False, "also save the base with the adapter folded in (full precision)")
    # What the notebook shows
    sample_prompts: int = param(4, "held-out prompts answered before and after SFT")
    sample_preset: str = param("k50", "the sampling preset of those replies (utils/model/generation.py)")
    sample_max_new_tokens: int = param(64, "their length")

    def __post_init__(self) -> None:
        # trl's packing without padding_free is its "wrapped" strategy: conversations run into each other (one
        # attends to the last) and are cut at row ends, so the assistant-only loss no longer means what it says.
        if self.packing and not self.padding_free:
            raise ParameterError("02_sft: packing: true needs padding_free: true (packing alone lets conversations attend "
                                 "to each other and cuts them at row ends)")

    def training(self) -> dict[str, Any]:
        """What decides the trained adapter, which a checkpoint must match to be resumed: all but how often it
        checkpoints, where bases are cached, whether it is merged and what is shown after."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("save_steps", "base_cache_dir", "merge", "sample_prompts", "sample_preset", "sample_max_new_tokens")}
