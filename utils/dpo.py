"""Stage 04, the other road: Direct Preference Optimization (DPO) on the reward stage's own pairs.

PPO (``04_ppo``) learns from the rankings in two steps: fit a reward model r(x, y) to them (stage 03), then
let the policy sample and climb r under a KL leash. DPO (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290)
skips both the reward model and the sampling. The optimum of PPO's KL-regularised objective satisfies
``r(x, y) = β log π(y|x)/π_ref(y|x) + β log Z(x)``, so a Bradley-Terry loss on that *implicit reward* trains
the policy directly on the preference pairs:

    L = -log σ(β [log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)])

trl's ``DPOTrainer`` computes the loss; the kit writes none of it. This module supplies the data, the model
and the reference, and measures the result. Implementation details worth naming:

1. **The proxy's pairs**: every ranked pair of the proxy's trees, the part of the training split stage 03's
   proxy reward model (the one PPO optimises) learned from. Never a tree of the judge's part: the judge is stage
   05's independent opinion, and a policy trained on its rankings would be judged by a model that shares its
   training data. Never a tree of the eval split or of the held-out file either (:func:`training_pairs`; the
   stage checks it splits the data as stage 03 did, ``judge_fraction`` included). HH-RLHF pairs that stage 03
   mixed into the proxy (``hh_weight > 0``) are not given to DPO: trl's loss has no per-pair weight to honour.
2. **trl's conversational preference format** (:func:`conversational_record`: ``prompt`` a conversation,
   ``chosen`` and ``rejected`` one assistant turn each), tokenized by the kit's chat format
   (:func:`encode_pairs`): trl 1.16 tokenizes conversations only through a chat template, and the tiny base
   (OpenAssistant tags) has none. So the trainer gets ``prompt_ids``/``chosen_ids``/``rejected_ids``, as
   stage 03 gives trl's reward trainer its ids, and a subclass passes them to trl's collator unchanged. A reply
   ends with its end-of-turn token: DPO also learns where to stop, as SFT did.
3. **Too long?** The context is cut from the left (oldest turns first), keeping at least half the window;
   the replies fill the rest and keep their beginnings. Counted, never silent.
4. **One base in memory**: the SFT adapter is loaded as the trainable policy (peft's ``"default"``, trained
   further, as PPO does) and trl adds a frozen copy named ``"ref"`` as π_ref: a forward pass with ``"ref"``
   active is the SFT model. trl's copy leaves out the SFT adapter's trainable chat-token rows, and trl casts a
   4-bit model's trainable adapter to bf16 (QLoRA's choice on bf16 GPUs), which rounds the SFT weights; so
   :func:`make_trainer` loads the saved SFT weights into both adapters afterwards, the policy in float32. At
   step 0 the policy *is* the reference, exactly.
5. **Pairs weigh alike**: trl's loss has no per-pair weight, so a ranking of 4 replies (6 pairs) counts six
   times a ranking of 2 (1 pair). Stage 03's reward model weighs rankings alike (``pair_weighting="group"``).
6. **The held-out yardstick** (:func:`implicit_rewards`): DPO's implicit reward ``β log π(y|x)/π_ref(y|x)`` on
   pairs it never saw (the eval split and the 100-tree file, the pairs stage 03 scores its reward model on):
   accuracy (a tie counts half, as in stage 03), mean margin and loss, before and after training. Before
   training π = π_ref, so every implicit reward is 0: accuracy 0.5, margin 0, loss ln 2.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from utils import chat_format
from utils.modeling import default_device, pair_schedule_args, trainer_device_args
from utils.notebook_params import FromParams

POLICY = "default"  # peft writes the adapter named "default" at the top of a folder: what stage 05 loads
REFERENCE = "ref"  # the name trl gives the frozen copy of a PEFT model's adapter
HELDOUT_SETS = ("eval split", "100-tree file")  # stage 03's names for the OASST pairs no model trained on
DATA_PARAMETERS = ("train_paths", "heldout_paths", "lang", "eval_fraction", "judge_fraction", "seed")  # decide the split


@dataclass
class DPOSettings(FromParams):
    """How to train; the notebook's parameters of the same names."""

    beta: float = 0.1  # strength of the KL leash: smaller lets the policy move further from SFT
    loss_type: str = "sigmoid"  # trl's: "sigmoid" (DPO), "ipo", "hinge", ...
    learning_rate: float = 5e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # pairs per forward pass (each pair is two sequences, and two more for the reference)
    grad_accum: int = 1  # forward passes per optimizer step
    warmup: float = 0.1  # fraction of the steps
    max_length: int = 256  # tokens of prompt and reply together
    gradient_checkpointing: bool = False
    logging_steps: int | None = None  # None: about 20 points on the training curve
    seed: int = 0


# ----------------------------------------------------------------------------------------------------- pairs


def training_pairs(split, judge_fraction: float, seed: int = 0) -> list:
    """The preference pairs of the proxy's trees: what stage 03's proxy trained on (before its ``max_train_pairs``),
    none of the judge's."""
    from utils.oasst import preference_pairs, rm_groups
    from utils.reward.stage import split_for_judge

    proxy_trees, _ = split_for_judge(split.train, judge_fraction, seed)
    return preference_pairs(rm_groups(proxy_trees))


def heldout_pairs(split, max_pairs: int | None = None) -> dict[str, list]:
    """The pairs of the eval split and of the held-out file, ``max_pairs`` of each at most (stage 03's held-out sets)."""
    from utils.oasst import preference_pairs, rm_groups

    trees = {"eval split": split.eval, "100-tree file": split.heldout}
    return {name: preference_pairs(rm_groups(t))[:max_pairs] for name, t in trees.items()}


def check_same_split(params: Mapping[str, Any], reward_parameters: Mapping[str, Any], stage: str) -> None:
    """Stop, in one line, when this stage would split the data otherwise than stage 03 did: DPO's pairs would
    not be the reward model's, and its held-out pairs could include trees the reward model trained on."""
    differ = [k for k in DATA_PARAMETERS if k in reward_parameters and reward_parameters[k] != params[k]]
    if differ:
        k = differ[0]
        raise ValueError(f"{stage} splits the data with {k}={params[k]!r} but 03_reward ran with {k}={reward_parameters[k]!r}: "
                         f"give both stages the same {', '.join(differ)} (a profile's shared data anchor does)")


def reward_stage(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 03's metrics and the parameters it ran with (:class:`~utils.artifacts.StageNotRun` when it has not run)."""
    from utils.artifacts import read_metrics, stage_dir
    from utils.stage_record import read_record
    from utils.stages import REWARD

    metrics = read_metrics(run_dir, REWARD)
    record = read_record(stage_dir(run_dir, REWARD))
    return metrics, (record.parameters if record else {})


def conversational_record(pair) -> dict[str, Any]:
    """A pair in trl's conversational preference format."""
    return {"prompt": chat_format.normalize(pair.prompt),
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


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


# ----------------------------------------------------------------------------------------------------- model


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


def _trainer_class():
    """trl's DPOTrainer, taught to take pairs tokenized by the kit (built on first use: trl imports slowly)."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """trl's ``DPOTrainer``, fed pairs already tokenized by :func:`encode_pairs` (trl 1.16 would tokenize
        conversations through a chat template). Everything else, the loss included, is trl's."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer


def trainer_args(settings: DPOSettings, n_pairs: int, output_dir: str, save_steps: int = 0):
    """trl's ``DPOConfig`` for our settings, in the compute dtype of the device (fp32 on the CPU)."""
    from trl import DPOConfig

    device = default_device()
    return DPOConfig(
        output_dir=output_dir,
        beta=settings.beta,
        loss_type=[settings.loss_type],
        max_length=None,  # already fitted by encode_pairs
        gradient_checkpointing=settings.gradient_checkpointing,
        **pair_schedule_args(n_pairs, settings.batch_size, settings.grad_accum, settings.epochs, settings.learning_rate,
                             settings.warmup, settings.logging_steps, settings.max_steps),
        **trainer_device_args(device, settings.seed, save_steps),
    )


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


def make_trainer(model, tokenizer, train_set: EncodedPairs, settings: DPOSettings, sft_adapter_dir: str | Path, output_dir: str,
                 save_steps: int = 0):
    """trl's DPO trainer on the policy ``model`` (a peft model whose ``"default"`` adapter is the SFT adapter),
    the reference by adapter switch (see the module's note 4)."""
    from transformers import PrinterCallback

    trainer = _trainer_class()(
        model=model,
        ref_model=None,  # a peft model: trl copies the adapter as "ref", one base in memory
        args=trainer_args(settings, len(train_set), output_dir, save_steps),
        train_dataset=train_set.dataset(),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # the notebook plots the training curve instead of printing each log line
    sft_as_reference(trainer, sft_adapter_dir)
    return trainer


def sft_as_reference(trainer, sft_adapter_dir: str | Path) -> None:
    """A trl trainer built on a peft model without ``peft_config`` (DPO's, RLOO's): its ``"ref"`` copy of the adapter
    is there, and both adapters hold exactly the saved SFT weights, the reference frozen (see the module's note 4)."""
    if REFERENCE not in trainer.model.peft_config:
        raise RuntimeError("trl made no reference adapter: this trl version handles PEFT models otherwise")
    restore_sft_weights(trainer.model, sft_adapter_dir)


# ----------------------------------------------------------------------------------------------------- measuring


@dataclass
class ImplicitRewards:
    """DPO's implicit rewards ``β log π(y|x)/π_ref(y|x)`` of the chosen and the rejected reply of each pair."""

    chosen: list[float]
    rejected: list[float]

    @property
    def n(self) -> int:
        return len(self.chosen)

    def window(self, start: int, stop: int) -> "ImplicitRewards":
        return ImplicitRewards(self.chosen[start:stop], self.rejected[start:stop])

    @property
    def accuracy(self) -> float:
        from utils.reward.evaluation import pairwise_accuracy

        return pairwise_accuracy(self.chosen, self.rejected)

    @property
    def margin(self) -> float:
        return float(sum(c - r for c, r in zip(self.chosen, self.rejected)) / self.n) if self.n else math.nan

    @property
    def loss(self) -> float:
        from utils.reward.evaluation import pairwise_loss

        return pairwise_loss(self.chosen, self.rejected) if self.n else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"pairs": self.n, "accuracy": self.accuracy, "margin": self.margin, "loss": self.loss}


@torch.no_grad()
def reply_logprob_sums(model, encoded: EncodedPairs, pad_id: int, batch_size: int = 16, reference: bool = False) -> np.ndarray:
    """``log π(y|x)`` of each chosen reply, then of each rejected reply, summed over the reply tokens alone (as
    trl's loss sums them): under the policy (``"default"``), or with ``reference`` under π_ref (``"ref"``)."""
    from utils.evaluate import masked_logprob_sums

    sequences = [p + c for p, c in zip(encoded.prompt_ids, encoded.chosen_ids)] + \
                [p + r for p, r in zip(encoded.prompt_ids, encoded.rejected_ids)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(encoded.prompt_ids, encoded.chosen_ids)] + \
            [[0] * len(p) + [1] * len(r) for p, r in zip(encoded.prompt_ids, encoded.rejected_ids)]
    was_training = model.training
    model.eval()
    try:
        if reference:
            with as_reference(model):
                return masked_logprob_sums(model, sequences, masks, pad_id, batch_size)
        return masked_logprob_sums(model, sequences, masks, pad_id, batch_size)
    finally:
        model.train(was_training)


def implicit_rewards(model, encoded: EncodedPairs, beta: float, pad_id: int, batch_size: int = 16,
                     reference: np.ndarray | None = None) -> ImplicitRewards:
    """The implicit rewards of ``encoded``'s pairs under the current policy and the reference.

    π_ref never trains, so its log-probs (:func:`reply_logprob_sums` with ``reference=True``) can be passed in
    once and reused before and after training, rather than recomputed.
    """
    policy = reply_logprob_sums(model, encoded, pad_id, batch_size)
    if reference is None:
        reference = reply_logprob_sums(model, encoded, pad_id, batch_size, reference=True)
    rewards = (beta * (policy - reference)).tolist()
    return ImplicitRewards(rewards[: len(encoded)], rewards[len(encoded) :])


@dataclass
class DPOStats:
    before: ImplicitRewards
    after: ImplicitRewards
    train_seconds: float
    steps: int
    log_history: list[dict[str, Any]] = field(default_factory=list)


def train(trainer, heldout: EncodedPairs, batch_size: int = 16) -> DPOStats:
    """Held-out implicit rewards, training (resumed from the last checkpoint, if any), held-out rewards again."""
    from utils import checkpoints

    beta, pad_id = trainer.args.beta, trainer.processing_class.pad_token_id
    model = trainer.accelerator.unwrap_model(trainer.model)
    reference = reply_logprob_sums(model, heldout, pad_id, batch_size, reference=True)
    before = implicit_rewards(model, heldout, beta, pad_id, batch_size, reference)
    saving = trainer.args.save_strategy == "steps"
    resume = checkpoints.last_complete(trainer.args.output_dir) if saving else None
    if resume:
        print(f"resuming from {resume}")
    started = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - started
    if saving and trainer.is_world_process_zero():
        checkpoints.remove(trainer.args.output_dir)
    after = implicit_rewards(model, heldout, beta, pad_id, batch_size, reference)
    return DPOStats(before, after, seconds, trainer.state.global_step, list(trainer.state.log_history))


def run_training(model, tokenizer, train_set: EncodedPairs, heldout: EncodedPairs, settings: DPOSettings, sft_adapter_dir: str | Path,
                 checkpoint_root: str | Path | None = None, save_steps: int = 0, eval_batch_size: int = 16):
    """Build the trainer and train: ``(trainer, stats)``. With ``save_steps > 0`` checkpoints go to a folder of
    ``checkpoint_root`` named after the settings and the pairs (another configuration never resumes them)."""
    from utils import checkpoints

    saving = save_steps > 0 and checkpoint_root is not None
    with tempfile.TemporaryDirectory(prefix="dpo-trainer-") as scratch:
        save_dir = Path(checkpoint_root) / checkpoints.run_key(asdict(settings), train_set.summary(), train_set.prompt_ids,
                                                               train_set.chosen_ids) if saving else Path(scratch)
        trainer = make_trainer(model, tokenizer, train_set, settings, sft_adapter_dir, str(save_dir), save_steps if saving else 0)
        stats = train(trainer, heldout, eval_batch_size)
    return trainer, stats


def save_policy(model, tokenizer, path: str | Path) -> Path:
    """The trained policy as a plain peft adapter folder (stage 05 loads it beside SFT's on the same base)."""
    model.save_pretrained(str(path), selected_adapters=[POLICY])
    tokenizer.save_pretrained(str(path))
    return Path(path)


def per_set(stats: DPOStats, sets: Mapping[str, Sequence]) -> dict[str, tuple[ImplicitRewards, ImplicitRewards, list]]:
    """``{set: (rewards before, rewards after, pairs)}`` for each held-out set (in the order they were concatenated
    for :func:`implicit_rewards`) and for ``"both"`` together."""
    out, start = {}, 0
    for name, pairs in sets.items():
        window = (start, start + len(pairs))
        out[name] = (stats.before.window(*window), stats.after.window(*window), list(pairs))
        start += len(pairs)
    out["both"] = (stats.before, stats.after, [p for ps in sets.values() for p in ps])
    return out


def heldout_table(stats: DPOStats, sets: Mapping[str, Sequence], reward_model: Mapping[str, Any] | None = None):
    """A DataFrame of the held-out figures per pair set, before and after training, beside the length baseline.

    ``reward_model`` is stage 03's metrics: its proxy's accuracy is shown beside when it was measured on as many
    pairs of the same two sets.
    """
    import pandas as pd

    from utils.reward.evaluation import length_baseline_accuracy

    rows = {name: {"pairs": len(pairs), "accuracy before": b.accuracy, "accuracy after": a.accuracy, "margin after": a.margin,
                   "loss after": a.loss, "length baseline": length_baseline_accuracy(pairs)}
            for name, (b, a, pairs) in per_set(stats, sets).items()}
    if reward_model is not None and reward_model.get("pairs_eval") == stats.after.n:
        rows["both"]["reward model (03)"] = reward_model.get("eval_accuracy")
    return pd.DataFrame(rows).T.astype({"pairs": int}).round(3)


def stage_metrics(
    stats: DPOStats,
    out_dir: str | Path,
    *,
    adapter_dir: str | Path,
    settings: DPOSettings,
    train_set: EncodedPairs,
    heldout: EncodedPairs,
    heldout_sets: Mapping[str, Sequence],
    parameters: tuple[int, int],
    data_skipped: Mapping[str, int] | None = None,
    peak_memory_mb: float | None = None,
    processes: int = 1,
    started: float | None = None,
) -> dict[str, Any]:
    """What the DPO stage records, the same whether a notebook or a script ran it."""
    from utils.artifacts import record_path
    from utils.reward.evaluation import length_baseline_accuracy

    by_set = {name: {"pairs": len(pairs), "accuracy_before": b.accuracy, "accuracy_after": a.accuracy, "margin_after": a.margin}
              for name, (b, a, pairs) in per_set(stats, heldout_sets).items() if name != "both"}
    trainable, total = parameters
    logs = stats.log_history
    metrics = {
        "heldout_accuracy_before": stats.before.accuracy,
        "heldout_accuracy_after": stats.after.accuracy,
        "heldout_margin_before": stats.before.margin,
        "heldout_margin_after": stats.after.margin,
        "heldout_loss_before": stats.before.loss,
        "heldout_loss_after": stats.after.loss,
        "heldout_pairs": stats.after.n,
        "heldout_by_set": by_set,
        "length_baseline_accuracy": length_baseline_accuracy([p for ps in heldout_sets.values() for p in ps]),
        "train_pairs": len(train_set),
        "data_skipped": dict(data_skipped or {}),  # records the readers skipped (on_error: skip), by reason
        "train_encoding": train_set.summary(),
        "heldout_encoding": heldout.summary(),
        "train_seconds": stats.train_seconds,
        "steps": stats.steps,
        "train_losses": [h["loss"] for h in logs if "loss" in h],
        "train_reward_accuracies": [h["rewards/accuracies"] for h in logs if "rewards/accuracies" in h],
        "train_reward_margins": [h["rewards/margins"] for h in logs if "rewards/margins" in h],
        "beta": settings.beta,
        "loss_type": settings.loss_type,
        "trainable_params": trainable,
        "total_params": total,
        "adapter_dir": record_path(out_dir, adapter_dir),
        "peak_memory_mb": peak_memory_mb,
        "processes": processes,
    }
    if started is not None:
        metrics["seconds"] = time.time() - started
    return metrics


def plot_training(log_history: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """trl's logged loss, reward accuracy and margin on the training batches, against the optimizer step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, label in zip(axes, ("loss", "rewards/accuracies", "rewards/margins"),
                              ("DPO loss", "reward accuracy (training batches)", "reward margin (training batches)")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), "-")
        ax.set(xlabel="optimizer step", title=label)
    axes[0].axhline(math.log(2), color="grey", lw=0.8, ls=":")  # the loss where π = π_ref
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
