"""Training a reward model: a sequence classifier that gives a conversation's last reply one number, its reward.

Training follows InstructGPT (Ouyang et al., 2022, https://arxiv.org/abs/2203.02155) and OpenAssistant
(Köpf et al., 2023, https://arxiv.org/abs/2304.07327): for a prompt x and two replies where labellers
ranked y_w above y_l, minimise ``-log σ(r(x, y_w) − r(x, y_l))`` (a Bradley-Terry model of the ranking).
A group of k ranked replies gives k(k-1)/2 such pairs, and by default every *group* weighs the same:
each of its pairs counts 1/C(k,2) (``pair_weighting="group"``). InstructGPT (§3.5) trains the C(k,2)
pairs of a prompt as one batch element, and OpenAssistant's ``RMLoss`` averages the pair losses within
each ranking, then over rankings; weighing pairs alike (``"flat"``) would let a 4-reply prompt count six
times a 2-reply one. The kit keeps pairs as its batch unit (so ``group_by_length`` still batches pairs of
similar length) and gets the same objective from weights: per epoch, the weighted pair losses add up
to the mean over groups of each group's mean pair loss, times a constant.

The backbone is any ``AutoModelForSequenceClassification`` with one output and its own tokenizer: the
reward model need not share the policy's tokenizer (OpenAssistant's reward models were DeBERTa-v3
encoders). Only LoRA adapters on the backbone's linear layers (all of them, or those of some layers),
the new score head and, optionally, the embeddings of the chat tokens added to the tokenizer are
trained; trl's ``RewardTrainer`` runs the loop on pairs we tokenize ourselves.

Implementation details worth naming:

1. Conversations go through ``utils.model.chat_format`` with the reward model's tokenizer, so a reply is read
   in the same ``<|prompter|>…<|assistant|>…`` frame in training, in PPO and in evaluation.
2. Too long? Cut the *context* from the left (the oldest turns go first) and keep the reply: the reward
   judges the reply. A reply longer than the window on its own keeps its beginning.
3. The two replies of a pair share one batch (chosen in the first half, rejected in the second), and
   pairs of similar length are batched together (``group_by_length``): less padding to compute.
4. Rewards are nudged towards zero mean (``center_rewards_coefficient``, Eisenstein et al., 2023,
   https://arxiv.org/abs/2312.09244), so PPO's reward scale does not drift with the backbone.
5. The adapters are merged into the backbone when saving: a reward model directory is a plain
   transformers checkpoint plus ``reward.json``, and scoring runs without peft.
6. ``length_head``: ODIN (Chen et al., 2024, https://arxiv.org/abs/2402.07319). Two linear heads share
   the backbone, a *quality* head and a *length* head; their sum is trained on the ranking loss, while
   :func:`odin_loss` pushes the length head to correlate with reply length, the quality head to be
   uncorrelated with it, and the two heads' weights to be orthogonal. The length head is then dropped:
   :class:`RewardScorer` scores with the quality head, so PPO, RLOO and best-of-n optimise what length
   does not explain.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from utils.model.modeling import default_device, pair_schedule_args, print_progress_lines, trainer_device_args
from utils.reward.evaluation import pair_conversations
from utils.reward.model import REWARD_FILE, encode_conversation, load_backbone
from utils.reward.params import RewardParams

PairWeighting = Literal["group", "flat"]
PAIR_WEIGHTINGS = ("group", "flat")


@dataclass
class TrainResult:
    model_dir: Path
    log_history: list[dict[str, Any]] = field(default_factory=list)  # the trainer's logged losses and accuracies
    trainable_params: int = 0
    total_params: int = 0


def head_modules(model: nn.Module) -> list[str]:
    """Names of the top-level modules outside the backbone: the score head (and a pooler some models add).

    They start untrained, so they are trained in full (peft's ``modules_to_save``), never LoRA-adapted.
    """
    backbone = getattr(model, model.base_model_prefix)
    return [name for name, child in model.named_children() if child is not backbone and any(True for _ in child.parameters())]


def backbone_linear_layers(model: nn.Module) -> list[str]:
    """Full names of the backbone's linear layers, the LoRA targets (full names keep heads out)."""
    prefix = model.base_model_prefix
    return sorted(name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith(prefix + "."))


def lora_config(model: nn.Module, config: RewardParams, new_token_ids: Sequence[int]):
    """LoRA on the backbone's linear layers (of ``config.lora_layers``), the head and new token rows in full."""
    from peft import LoraConfig

    n_layers = getattr(model.config, "num_hidden_layers", None)
    if config.lora_layers is not None and n_layers is not None:
        wrong = [i for i in config.lora_layers if not 0 <= i < n_layers]
        if wrong or not config.lora_layers:
            raise ValueError(f"lora_layers {list(config.lora_layers)}: the backbone's layers are 0..{n_layers - 1}")

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=backbone_linear_layers(model),
        layers_to_transform=list(config.lora_layers) if config.lora_layers is not None else None,
        modules_to_save=head_modules(model),
        trainable_token_indices=list(new_token_ids) if config.train_new_tokens and new_token_ids else None,
        task_type="SEQ_CLS",
    )


def pair_weights(pairs: Sequence, weighting: PairWeighting = "group", multipliers: Sequence[float] | None = None) -> list[float]:
    """Each pair's weight in the reward loss, scaled to mean 1 over ``pairs`` (before ``multipliers``).

    ``"group"``: the n pairs of one ranking group (``pair.group``) weigh 1/n each, so every group counts
    the same; a pair without a group (HH-RLHF) is a group of its own. ``n`` counts the group's pairs
    present in ``pairs``: a group cut short by ``max_train_pairs`` still weighs one group. ``"flat"``: 1 each.
    ``multipliers`` (one per pair) then scale the weights: HH-RLHF pairs mixed in at a weight of their own
    (:func:`utils.reward.stage.mix_hh`).
    """
    if weighting not in PAIR_WEIGHTINGS:
        raise ValueError(f"pair_weighting must be one of {', '.join(map(repr, PAIR_WEIGHTINGS))}, got {weighting!r}")
    if multipliers is not None and len(multipliers) != len(pairs):
        raise ValueError(f"{len(multipliers)} weight multipliers for {len(pairs)} pairs")
    if weighting == "flat" or not pairs:
        weights = [1.0] * len(pairs)
    else:
        keys = [p.group if getattr(p, "group", None) is not None else ("single", i) for i, p in enumerate(pairs)]
        sizes = Counter(keys)
        scale = len(pairs) / len(sizes)  # mean weight 1: the loss keeps the scale (and learning rate) of "flat"
        weights = [scale / sizes[k] for k in keys]
    return weights if multipliers is None else [w * m for w, m in zip(weights, multipliers)]


def weighted_pair_loss(
    rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, weights: torch.Tensor, center_rewards_coefficient: float | None
) -> torch.Tensor:
    """``mean_i w_i * (-log σ(r_w,i − r_l,i) + c * (r_w,i + r_l,i)²)``: trl's reward loss with a weight per pair
    (all weights 1 give trl's loss exactly)."""
    per_pair = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected)
    if center_rewards_coefficient is not None:
        per_pair = per_pair + center_rewards_coefficient * (rewards_chosen + rewards_rejected) ** 2
    return (weights.to(per_pair.dtype) * per_pair).mean()


def pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson's r of two 1-D tensors, differentiable (0 when either is constant)."""
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm() + eps)


def odin_loss(heads: torch.Tensor, reply_chars: torch.Tensor, weights: torch.Tensor, head_weight: torch.Tensor,
              center_rewards_coefficient: float | None, length_loss_weight: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """ODIN's loss (Chen et al., 2024, §4) on a batch of pairs: ``(loss, parts)``.

    ``heads``: ``[2B, 2]`` outputs, quality then length, chosen replies in the first half; ``reply_chars``: each
    reply's length in characters; ``head_weight``: the ``[2, hidden]`` weights of the two linear heads.

    * ranking: the Bradley-Terry loss on the *sum* of the heads (the preference is explained by both);
    * length: ``-ρ(r_length, length)``: the length head should carry length;
    * decorrelation: ``|ρ(r_quality, length)|``: the quality head should not (Pearson's r over the batch);
    * orthogonality: ``|cos(w_quality, w_length)|``: the heads read different directions of the features.

    The correlations are over the pairs one process holds: under ``accelerate launch`` each process correlates its
    own share of the step's batch, so the loss is not the one-process loss split in two (the ranking term is).
    """
    quality, length = heads[:, 0], heads[:, 1]
    chosen, rejected = torch.chunk(quality + length, chunks=2)
    ranking = weighted_pair_loss(chosen, rejected, weights, center_rewards_coefficient)
    chars = reply_chars.to(heads.dtype)
    length_corr, quality_corr = pearson(length, chars), pearson(quality, chars)
    orthogonal = nn.functional.cosine_similarity(head_weight[0], head_weight[1], dim=0).abs()
    loss = ranking + length_loss_weight * (-length_corr + quality_corr.abs() + orthogonal)
    parts = {"ranking_loss": ranking.item(), "length_head_corr": length_corr.item(), "quality_head_corr": quality_corr.item(),
             "head_cosine": orthogonal.item()}
    return loss, parts


def score_head_weight(model: nn.Module, heads: int) -> torch.Tensor:
    """The trained weight of the score head, ``[heads, hidden]`` (peft keeps it under ``modules_to_save``)."""
    found = [p for name, p in model.named_parameters() if p.requires_grad and p.ndim == 2 and p.shape[0] == heads
             and name.endswith("weight") and "lora_" not in name]
    if len(found) != 1:
        raise ValueError(f"expected one trainable {heads}-output score head, found {len(found)}")
    return found[0]


def pairs_dataset(pairs: Sequence, tokenizer, max_length: int, weights: Sequence[float] | None = None):
    """trl's pre-tokenized preference format (``chosen_ids``, ``rejected_ids``) plus a ``length`` to group by,
    each pair's loss ``weight`` (default 1) and both replies' lengths in characters (ODIN's length signal).

    We tokenize ourselves because trl would render conversations with a chat template (our encoders have
    none) and would drop, not cut, pairs longer than ``max_length``.
    """
    from datasets import Dataset

    chosen, rejected = [], []
    for i, pair in enumerate(pairs):
        c, r = pair_conversations(pair)
        try:
            chosen.append(encode_conversation(c, tokenizer, max_length))
            rejected.append(encode_conversation(r, tokenizer, max_length))
        except ValueError as e:
            raise ValueError(f"pair {i}: {e}") from None
    lengths = [max(len(c), len(r)) for c, r in zip(chosen, rejected)]
    weights = list(weights) if weights is not None else [1.0] * len(chosen)
    return Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected, "length": lengths, "weight": weights,
                              "chosen_chars": [len(p.chosen) for p in pairs], "rejected_chars": [len(p.rejected) for p in pairs]})


def _weighted_trainer_classes():
    """trl's reward trainer and collator, taught the ``weight`` column (built on first use: trl imports slowly)."""
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class WeightedPreferenceCollator(DataCollatorForPreference):
        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().torch_call(examples)
            batch["weight"] = torch.tensor([float(e["weight"]) for e in examples], dtype=torch.float32)
            # trl stacks the chosen replies, then the rejected ones: their lengths in the same order
            batch["reply_chars"] = torch.tensor([e["chosen_chars"] for e in examples] + [e["rejected_chars"] for e in examples])
            return batch

    class WeightedRewardTrainer(RewardTrainer):
        """trl's ``RewardTrainer`` whose loss weighs each pair by the batch's ``weight`` (see :func:`pair_weights`).

        trl computes its loss, logs its accuracy and margins; the loss is then recomputed from the same
        rewards with the weights, so nothing runs the model twice.
        """

        def __init__(self, *args, length_head: bool = False, length_loss_weight: float = 0.1, **kwargs):
            super().__init__(*args, **kwargs)
            self.length_head, self.length_loss_weight = length_head, length_loss_weight
            # trl settled the pad token in __init__ (the tokenizer's, else EOS); its collator would drop "weight".
            self.data_collator = WeightedPreferenceCollator(
                pad_token_id=self.processing_class.pad_token_id, pad_to_multiple_of=self.args.pad_to_multiple_of
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("weight")
            reply_chars = inputs.pop("reply_chars")
            if self.length_head:
                return self.odin_compute_loss(model, inputs, weights, reply_chars, return_outputs)
            _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = weighted_pair_loss(chosen, rejected, weights.to(chosen.device), self.args.center_rewards_coefficient)
            return (loss, outputs) if return_outputs else loss

        def odin_compute_loss(self, model, inputs, weights, reply_chars, return_outputs):
            """Two heads: trl's loss and metrics expect one, so the forward pass, loss and logged metrics are ours."""
            mode = "train" if self.model.training else "eval"
            outputs = model(**inputs, use_cache=False)
            loss, parts = odin_loss(outputs.logits, reply_chars.to(outputs.logits.device), weights.to(outputs.logits.device),
                                    score_head_weight(model, 2), self.args.center_rewards_coefficient, self.length_loss_weight)
            chosen, rejected = torch.chunk(outputs.logits[:, 0].detach(), chunks=2)  # what scoring will use: the quality head
            self._metrics[mode]["accuracy"].append((chosen > rejected).float().mean().item())
            for key, value in parts.items():
                self._metrics[mode][key].append(value)
            return (loss, outputs) if return_outputs else loss

    return WeightedRewardTrainer, WeightedPreferenceCollator


def make_trainer(model, tokenizer, dataset, config: RewardParams, new_token_ids: Sequence[int], output_dir: str,
                 save_steps: int = 0):
    """The weighted reward trainer on a :func:`pairs_dataset`, LoRA applied (see :func:`lora_config`)."""
    trainer_cls, _ = _weighted_trainer_classes()
    heads = model.config.num_labels
    model.config.num_labels = 1  # trl refuses a model with more outputs; ODIN's second head is ours to train (compute_loss)
    trainer = trainer_cls(
        model=model,
        args=trainer_args(config, len(dataset), output_dir, save_steps),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model, config, new_token_ids),
        length_head=config.length_head,
        length_loss_weight=config.length_loss_weight,
    )
    model.config.num_labels = heads
    print_progress_lines(trainer, "reward model")  # the notebook plots the curve; the cell prints where it is
    return trainer


def trainer_args(config: RewardParams, n_pairs: int, output_dir: str, save_steps: int = 0):
    """trl's ``RewardConfig`` for our settings, in the compute dtype of the device (fp32 on the CPU).

    ``save_steps > 0``: a checkpoint in ``output_dir`` every ``save_steps`` steps (the last one kept), to resume from.
    """
    from trl import RewardConfig

    device = default_device()
    return RewardConfig(
        output_dir=output_dir,
        center_rewards_coefficient=config.center_rewards_coefficient,
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        max_length=None,  # already cut to config.max_length by encode_conversation
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # keep "length" for the sampler and "weight" for the loss
        **pair_schedule_args(n_pairs, config.batch_size, config.grad_accum, config.epochs, config.learning_rate,
                             config.warmup, config.logging_steps),
        **trainer_device_args(device, config.seed, save_steps),
    )


def train_reward_model(
    pairs: Sequence,
    config: RewardParams,
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    save_steps: int = 0,
    weight_multipliers: Sequence[float] | None = None,
) -> TrainResult:
    """Train on preference ``pairs`` and save the merged model to ``out_dir/reward_model``.

    With ``save_steps > 0`` and a ``checkpoint_dir``, checkpoints go to a subfolder of it named after the
    config and the pairs (another configuration never resumes them), and a killed run resumes from the last.
    ``weight_multipliers`` (one per pair) scale the pairs' loss weights (:func:`pair_weights`): HH-RLHF pairs
    mixed in with a weight of their own.
    """
    from transformers import set_seed

    from utils.pipeline import checkpoints

    if not pairs:
        raise ValueError("no preference pairs to train on")
    weights = pair_weights(pairs, config.pair_weighting, weight_multipliers)
    set_seed(config.seed)  # before loading: the new score head and token embeddings are drawn at random
    model, tokenizer, new_ids = load_backbone(config.base_model, config.trust_remote_code, heads=2 if config.length_head else 1)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and config.max_length > positions:
        raise ValueError(f"max_length {config.max_length} is longer than {config.base_model}'s {positions} positions")
    dataset = pairs_dataset(pairs, tokenizer, config.max_length, weights)
    # The trainer wants an output_dir; without checkpoints nothing lands there, the merged model goes to out_dir.
    saving = save_steps > 0 and checkpoint_dir is not None
    with tempfile.TemporaryDirectory(prefix="reward-trainer-") as scratch:
        save_dir = Path(checkpoint_dir) / checkpoints.run_key(asdict(config), pairs, *([weights] if weight_multipliers else [])) if saving else Path(scratch)
        trainer = make_trainer(model, tokenizer, dataset, config, new_ids, str(save_dir), save_steps if saving else 0)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        resume = checkpoints.last_complete(save_dir) if saving else None
        if resume:
            print(f"resuming from {resume}")
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if saving and trainer.is_world_process_zero():
            checkpoints.remove(save_dir)  # trained to the end: nothing will resume them
    model_dir = Path(out_dir) / "reward_model"
    if trainer.accelerator.is_main_process:  # under accelerate launch, every process holds the same trained model
        save_reward_model(trainer.model, tokenizer, config, model_dir)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(model_dir, list(trainer.state.log_history), trainable, total)


def save_reward_model(peft_model, tokenizer, config: RewardParams, model_dir: Path) -> Path:
    """Merge the adapters into the backbone and save it, its tokenizer and ``reward.json``."""
    merged = peft_model.merge_and_unload().to(torch.float32)
    model_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    heads = ["quality", "length"] if config.length_head else ["reward"]
    (model_dir / REWARD_FILE).write_text(json.dumps({"max_length": config.max_length, "heads": heads, "training": asdict(config)},
                                                    indent=2) + "\n")
    return model_dir
