"""Stage 04, the REINFORCE road: RLOO (REINFORCE Leave-One-Out) with trl's ``RLOOTrainer``.

PPO (``04_ppo``) learns a value head to tell a good reply from a lucky one. Ahmadian et al. (2024), "Back to Basics:
Revisiting REINFORCE-Style Optimization for Learning from Human Feedback in LLMs" (https://arxiv.org/abs/2402.14740),
argue that an LLM fine-tuned from a strong SFT model does not need one: sample ``k`` replies to each prompt, and let the
other ``k - 1`` replies be each reply's baseline:

    A_i = R_i − 1/(k−1) · Σ_{j≠i} R_j          R_i = r(x, y_i) − β · Σ_t (log π(y_i,t) − log π_ref(y_i,t))

    loss = − mean_i  A_i · log π(y_i | x)       (log π of the whole reply: one action, REINFORCE)

The baseline depends on the prompt but never on the reply it scores, so the gradient stays unbiased, and it is the
prompt's own average reward: a hard prompt whose replies all score low does not push every one of them down, the way
a single batch-wide baseline would. A value head has to *learn* that per-prompt average from the same few hundred
replies the policy learns from, and a weak baseline leaves the gradient noisy; the leave-one-out
mean is there from the first update, at the price of ``k`` samples per prompt.

trl computes the loss; the kit writes none of it. This module supplies the policy, the prompts, the reward and the
bookkeeping. Details worth naming:

1. **The policy is the SFT model**: stage 02's base (with its quantization) and its LoRA adapter as peft's trainable
   ``"default"`` adapter (:func:`utils.dpo.load_policy`). Passed to trl as a ``PeftModel`` and *without*
   ``peft_config``, trl 1.16 copies that adapter as a frozen adapter named ``"ref"`` and computes π_ref by switching
   to it: one base in memory, and the KL is to the SFT model, not to the bare base. trl's copy leaves out the SFT
   adapter's chat-token embedding rows and casts a 4-bit model's trainable adapter to bf16, so the saved SFT weights
   are loaded into both adapters afterwards, the policy in float32 (:func:`utils.dpo.sft_as_reference`): at the
   first update π = π_ref exactly, and trl's first logged KL is 0.
2. **The kit's chat format, not trl's**: trl 1.16 tokenizes prompts through a chat template (the tiny base has none)
   or re-tokenizes text. Each prompt is encoded once by :func:`utils.chat_format.encode_prompt` (turns tokenized one by
   one, as SFT trained), and :class:`_KitRLOOTrainer` hands trl those ids. Prompts longer than ``max_prompt_tokens``
   are skipped and counted, never cut.
3. **Replies end at the kit's stop tokens** (:func:`utils.chat_format.stop_token_ids`, set as the model's generation
   ``eos_token_id``, which trl reads): trl keeps the stop token in the reply, so the policy also learns where to stop.
   The reward sees the reply as :func:`utils.chat_format.decode_reply` decodes it, the text stage 05 scores.
4. **Sampling from π itself**: temperature 1, no top-k, no top-p, no repetition penalty. The samples are then exactly
   on-policy, which REINFORCE assumes; dropout is off, so the log-probs that are trained are those that sampled.
5. **One update = one generation batch**: ``prompts_per_update × replies_per_prompt`` replies, sampled once and
   never reused (trl's ``num_iterations`` = 1), optionally in micro-batches of ``mini_batch_size`` (gradient
   accumulation, for memory). With ``steps_per_update`` = 1 the update is one optimizer step, trl's PPO-style clipping
   never acts (the ratio π/π_old is 1) and the update is the paper's plain REINFORCE with the leave-one-out baseline.
   With ``steps_per_update`` = s > 1 the shuffled replies are split into s mini-batches, one optimizer step each, as
   PPO's mini-batches: the same samples buy s smaller Adam steps, and from the second on π has moved, so trl's clipped
   ratio of the whole reply (ε = 0.2) holds each step near the policy that sampled. The learning rate is constant.
6. **KL in the reward**: trl subtracts β times the reply's summed log-ratio (the paper's sequence-level penalty) from
   the reward before the baseline. trl logs the KL per *token*; the per-update log here also gives it per *reply*,
   the unit of PPO's ``kl`` and stage 05's KL (trl's token mean times the mean reply length, which is exactly the
   reply mean: one generation per logged update).
7. **Snapshots** of the policy adapter at the updates of :func:`utils.ppo.stage.snapshot_schedule` (update 0 is the SFT
   policy), peft folders ``snapshots/update-NNNNNN`` for stage 05's reward-against-KL curve, as PPO keeps them.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from utils import chat_format
from utils.dpo import POLICY, REFERENCE, as_reference, load_policy, save_policy, sft_as_reference  # noqa: F401 (re-exported)
from utils.notebook_params import FromParams
from utils.ppo.checkpoint import export_snapshots, snapshot_path

Conversation = list[dict[str, Any]]
RewardFn = Callable[[list[Conversation], list[str]], Sequence[float]]
SNAPSHOTS_DIR = "snapshots"
PROGRESS_STATE = "fixed_set_state.json"


@dataclass
class RLOOSettings(FromParams):
    """How to train; the notebook's parameters of the same names."""

    updates: int = 12  # optimizer steps, one generation batch each
    prompts_per_update: int = 4
    replies_per_prompt: int = 4  # k: each reply's baseline is the mean reward of the other k - 1
    mini_batch_size: int | None = None  # replies per forward/backward pass (None: the whole update at once)
    steps_per_update: int = 1  # optimizer steps per generation batch (module note 5)
    max_new_tokens: int = 48
    max_prompt_tokens: int = 256  # longer prompts are left out (and counted), never cut
    learning_rate: float = 1e-3
    beta: float = 0.05  # the KL coefficient: reward minus beta x (log π − log π_ref) summed over the reply
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("updates", "prompts_per_update", "max_new_tokens", "max_prompt_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RLOOSettings.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.replies_per_prompt < 2:
            raise ValueError(f"RLOOSettings.replies_per_prompt must be >= 2 (the leave-one-out baseline needs another reply), "
                             f"got {self.replies_per_prompt!r}")
        if self.mini_batch_size is not None and (self.mini_batch_size < 1 or self.replies_per_update % self.mini_batch_size):
            raise ValueError(f"RLOOSettings.mini_batch_size must divide the {self.replies_per_update} replies of an update, "
                             f"got {self.mini_batch_size!r}")
        micro_batches = self.replies_per_update // (self.mini_batch_size or self.replies_per_update)
        if self.steps_per_update < 1 or micro_batches % self.steps_per_update:
            raise ValueError(f"RLOOSettings.steps_per_update must divide the {micro_batches} micro-batches of an update "
                             f"({self.replies_per_update} replies in micro-batches of {self.mini_batch_size}), "
                             f"got {self.steps_per_update!r}")

    @property
    def replies_per_update(self) -> int:
        return self.prompts_per_update * self.replies_per_prompt


# ----------------------------------------------------------------------------------------------------- prompts


@dataclass
class PromptSet:
    """The training prompts that fit, their ids in the kit's chat format, and how many were too long."""

    conversations: list[Conversation]
    ids: list[list[int]]
    too_long: int = 0
    texts: list[str] = field(default_factory=list)  # as rendered for display: trl logs and shuffles these

    def __len__(self) -> int:
        return len(self.conversations)

    def dataset(self):
        """trl's standard (not conversational) prompt format, with each prompt's index for the reward function."""
        from datasets import Dataset

        return Dataset.from_dict({"prompt": self.texts, "prompt_index": list(range(len(self)))})


def encode_prompts(prompts: Sequence[Conversation], tokenizer, max_prompt_tokens: int) -> PromptSet:
    """Each prompt as the policy sees it when it starts to reply (the assistant tag last); longer ones are counted."""
    from utils.ppo.rollout import encode_prompts as encode

    kept, ids, too_long = encode(prompts, tokenizer, max_prompt_tokens)
    if not kept:
        raise ValueError(f"none of the {len(prompts)} prompts fits in max_prompt_tokens={max_prompt_tokens}")
    texts = [chat_format.render(p, tokenizer, add_generation_prompt=True) for p in kept]
    return PromptSet(kept, ids, too_long, texts)


# ----------------------------------------------------------------------------------------------------- reward


class TrlReward:
    """A kit reward ``fn(conversations, replies)`` as a trl reward function.

    trl calls it with the prompts as the dataset holds them (rendered text), the completions and their token ids, and
    every other dataset column (``prompt_index``). The conversation is looked up by index and each reply decoded the
    kit's way (:func:`utils.chat_format.decode_reply`: up to the stop token, special tokens dropped), so ``fn`` sees
    what stage 05 and PPO's reward see. A wrong number of scores, or a NaN, stops training in one line. A few
    (prompt, reply, score) per update are kept in ``samples``.
    """

    def __init__(self, fn: RewardFn, prompts: PromptSet, tokenizer, samples_per_update: int = 3,
                 steps_per_update: int = 1) -> None:
        self.fn, self.prompts, self.tokenizer = fn, prompts, tokenizer
        self.steps_per_update = steps_per_update  # trl's optimizer steps per kit update (module note 5)
        spec = getattr(fn, "spec", None)  # set by utils.reward_functions on a function named by a stage parameter
        # The name errors give, and trl's log key (rewards/<name>/mean).
        self.__name__ = f"reward_function {spec!r}" if spec else getattr(fn, "__name__", "reward")
        self.samples_per_update = samples_per_update
        self.samples: list[dict[str, Any]] = []

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], prompt_index: list[int],
                 trainer_state=None, **_: Any) -> list[float]:
        from utils.reward_functions import checked_scores

        conversations = [self.prompts.conversations[i] for i in prompt_index]
        replies = [chat_format.decode_reply(ids, self.tokenizer) for ids in completion_ids]
        scores = checked_scores(self.fn, conversations, replies, name=self.__name__)
        update = trainer_state.global_step // self.steps_per_update + 1 if trainer_state is not None else None
        self.samples += [{"update": update, "prompt": c[-1]["content"], "reply": r, "reward": s}
                         for c, r, s in list(zip(conversations, replies, scores))[: self.samples_per_update]]
        return scores


# ----------------------------------------------------------------------------------------------------- trainer


def _trainer_class():
    """trl's RLOOTrainer, taught to take prompts tokenized by the kit (built on first use: trl imports slowly)."""
    from trl import RLOOTrainer

    class KitRLOOTrainer(RLOOTrainer):
        """trl's ``RLOOTrainer`` with the prompts' token ids from :func:`encode_prompts` (see the module's note 2).
        Everything else, sampling, the leave-one-out advantage and the loss, is trl's."""

        kit_prompt_ids: dict[str, list[int]] | None = None  # rendered prompt -> its ids, set by make_trainer

        def _tokenize_prompts(self, prompts: list):
            return [list(self.kit_prompt_ids[p]) for p in prompts], None, {}  # (ids, no images, no multimodal fields)

    return KitRLOOTrainer


def trainer_args(settings: RLOOSettings, output_dir: str, save_steps: int = 0):
    """trl's ``RLOOConfig`` for our settings: one update per generation batch, sampling from π itself, quiet."""
    from trl import RLOOConfig

    from utils import distributed
    from utils.modeling import default_device, trainer_device_args

    processes = distributed.world_size()  # under accelerate launch each process samples its share of an update
    micro = settings.mini_batch_size or settings.replies_per_update
    steps = settings.steps_per_update
    if settings.replies_per_update % (micro * processes * steps):
        raise ValueError(f"the {settings.replies_per_update} replies of an update do not split into {steps} steps of "
                         f"micro-batches of {micro} on {processes} processes")
    micro_batches = settings.replies_per_update // (micro * processes)  # per process and update
    return RLOOConfig(
        output_dir=output_dir,
        max_steps=settings.updates * steps,  # trl counts optimizer steps; the kit counts updates (module note 5)
        per_device_train_batch_size=micro,
        steps_per_generation=micro_batches,  # one generation batch = one update's replies
        gradient_accumulation_steps=micro_batches // steps,
        num_generations=settings.replies_per_prompt,
        num_iterations=1,  # every batch is sampled fresh: on-policy REINFORCE (module note 5)
        max_completion_length=settings.max_new_tokens,
        temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,  # π itself (module note 4)
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        adam_epsilon=1e-5,  # as the kit's PPO (Huang et al. 2022, detail 3)
        max_grad_norm=settings.max_grad_norm,
        gradient_checkpointing=settings.gradient_checkpointing,
        disable_dropout=True,
        logging_steps=steps,  # one log per update: its generation's rewards with the mean of its steps' statistics
        **trainer_device_args(default_device(), settings.seed, save_steps * steps),
    )


def save_snapshot(model, folder: str | Path, update: int) -> Path:
    """The policy adapter alone, as a plain peft folder: stage 05 loads it on the base like the final adapter."""
    path = snapshot_path(folder, update)
    model.save_pretrained(str(path), selected_adapters=[POLICY])
    return path


def measure_progress(model, progress, update: int) -> None:
    """The fixed set at a snapshot (:mod:`utils.fixed_set`): the policy is the active ``"default"`` adapter, π_ref the
    frozen ``"ref"`` copy of SFT. Sampled in eval mode (the KV cache), then back to training."""
    from utils.fixed_set import acting

    was_training = model.training
    model.eval()
    progress.measure(update, lambda: acting(model), lambda: acting(model, as_reference(model)))
    model.train(was_training)


def _callback(model, snapshot_updates: Sequence[int], snapshot_dir: Path, log: Callable[[str], None] | None, progress=None,
              steps_per_update: int = 1):
    """A transformers callback: snapshots at the chosen updates (and the fixed set measured there), one row (and one
    printed line) per update. trl's ``global_step`` counts optimizer steps, ``steps_per_update`` to an update."""
    from transformers import TrainerCallback

    class RLOOCallback(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self._began = time.perf_counter()
            self._seconds = math.nan

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % steps_per_update == 0:  # the update's first step: it samples
                self._began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % steps_per_update:
                return
            self._seconds = time.perf_counter() - self._began  # sampling, scoring and the update's optimizer steps
            update = state.global_step // steps_per_update
            if update in snapshot_updates and state.is_world_process_zero:
                save_snapshot(model, snapshot_dir, update)
                if progress is not None:
                    measure_progress(model, progress, update)
                    progress.save_state(snapshot_dir / PROGRESS_STATE)  # a resumed run keeps what was measured

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.rows.append(update_row(state.global_step // steps_per_update, logs, self._seconds))
                if log and state.is_world_process_zero:
                    log(format_row(self.rows[-1]))

    return RLOOCallback()


def update_row(update: int, logs: Mapping[str, Any], seconds: float = math.nan) -> dict[str, Any]:
    """trl's logs of one update under the kit's names (PPO's where they mean the same)."""

    def get(key: str) -> float:
        value = logs.get(key)
        return math.nan if value is None else float(value)

    return {
        "update": update,
        "reward_mean": get("reward"),  # the score alone, before the KL penalty (trl logs it so)
        "reward_std": get("reward_std"),
        "kl": get("kl") * get("completions/mean_length"),  # nats per reply (module note 6)
        "kl_per_token": get("kl"),
        "entropy": get("entropy"),
        "clip_ratio": get("clip_ratio/region_mean"),
        "response_length": get("completions/mean_length"),
        "ended_fraction": 1.0 - get("completions/clipped_ratio"),  # replies that ended with a stop token
        "frac_reward_zero_std": get("frac_reward_zero_std"),  # prompts whose k replies all scored alike: no signal
        "grad_norm": get("grad_norm"),  # (trl's loss is left out: leave-one-out advantages sum to 0, so it logs 0)
        "seconds": seconds,
    }


def format_row(row: Mapping[str, Any]) -> str:
    return (f"update {row['update']:>4}  reward {row['reward_mean']:+.3f} ± {row['reward_std']:.3f}  kl {row['kl']:.3f} "
            f"({row['kl_per_token']:.4f}/token)  entropy {row['entropy']:.2f}  length {row['response_length']:.1f}  "
            f"ended {row['ended_fraction']:.2f}  {row['seconds']:.1f}s")


def make_trainer(model, tokenizer, prompts: PromptSet, reward: TrlReward, settings: RLOOSettings, sft_adapter_dir: str | Path,
                 output_dir: str, callbacks: Sequence = (), save_steps: int = 0):
    """trl's RLOO trainer on the policy ``model`` (a peft model whose ``"default"`` adapter is the SFT adapter), the
    reference by adapter switch (module note 1)."""
    from transformers import PrinterCallback

    from utils.ppo.model import disable_dropout

    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: call utils.chat_format.add_special_tokens(tokenizer) first")
    if len(prompts) < settings.prompts_per_update:  # trl's sampler drops an incomplete batch: there would be no update
        raise ValueError(f"{len(prompts)} prompts fit, fewer than prompts_per_update={settings.prompts_per_update}")
    model.generation_config.eos_token_id = chat_format.stop_token_ids(tokenizer)  # trl stops at these (module note 3)
    disable_dropout(model)  # LoRA's and attention's too: the log-probs trained on are those that sampled
    cls = _trainer_class()
    trainer = cls(model=model, reward_funcs=[reward], args=trainer_args(settings, output_dir, save_steps),
                  train_dataset=prompts.dataset(), processing_class=tokenizer, callbacks=list(callbacks))
    trainer.kit_prompt_ids = dict(zip(prompts.texts, prompts.ids))
    trainer.remove_callback(PrinterCallback)  # one line per update comes from the kit's callback instead
    sft_as_reference(trainer, sft_adapter_dir)  # module note 1
    return trainer


@dataclass
class RLOOStats:
    train_log: list[dict[str, Any]]  # one row per update (update_row)
    train_seconds: float
    updates: int
    snapshots: dict[int, Path]  # update -> the exported peft folder
    samples: list[dict[str, Any]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)  # trl's own, unrenamed


def run_training(model, tokenizer, prompts: PromptSet, reward_fn: RewardFn, settings: RLOOSettings, sft_adapter_dir: str | Path,
                 out_dir: str | Path, *, snapshot_updates: Sequence[int] = (), checkpoint_root: str | Path | None = None,
                 save_steps: int = 0, log: Callable[[str], None] | None = print, progress=None):
    """Build the trainer and train: ``(trainer, stats)``.

    The policy adapter is kept at ``snapshot_updates`` (0: before the first update) and copied to
    ``out_dir/snapshots``; with ``progress`` (a :class:`utils.fixed_set.FixedSetProgress`) the fixed held-out prompts
    are answered at each of them. With ``save_steps > 0`` trl checkpoints go to a folder of ``checkpoint_root`` named after the
    settings, prompts, reward and snapshot schedule (another configuration never resumes them), every ``save_steps``
    updates; a killed run resumes from the last complete one, and the snapshots taken before it are kept there too.
    """
    from utils import checkpoints

    saving = save_steps > 0 and checkpoint_root is not None
    snapshot_updates = sorted({int(u) for u in snapshot_updates})
    with tempfile.TemporaryDirectory(prefix="rloo-trainer-") as scratch:
        reward = TrlReward(reward_fn, prompts, tokenizer, steps_per_update=settings.steps_per_update)
        key = checkpoints.run_key(asdict(settings), prompts.ids, getattr(reward_fn, "fingerprint", reward.__name__), snapshot_updates)
        save_dir = Path(checkpoint_root) / key if saving else Path(scratch)
        callback = _callback(model, snapshot_updates, save_dir / SNAPSHOTS_DIR, log, progress, settings.steps_per_update)
        trainer = make_trainer(model, tokenizer, prompts, reward, settings, sft_adapter_dir, str(save_dir), [callback],
                               save_steps if saving else 0)
        resume = checkpoints.last_complete(save_dir) if saving else None
        if resume and log:
            log(f"resuming from {resume}")
        if resume is None and 0 in snapshot_updates and trainer.is_world_process_zero():
            save_snapshot(model, save_dir / SNAPSHOTS_DIR, 0)  # the SFT policy itself, the curve's first point
            if progress is not None:
                measure_progress(model, progress, 0)
        elif resume is not None and progress is not None:
            progress.load_state(save_dir / SNAPSHOTS_DIR / PROGRESS_STATE)
        started = time.time()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.time() - started
        snapshots = {}
        if trainer.is_world_process_zero():
            snapshots = export_snapshots(save_dir / SNAPSHOTS_DIR, Path(out_dir) / SNAPSHOTS_DIR, snapshot_updates)
            if saving:
                checkpoints.remove(save_dir)
    stats = RLOOStats(callback.rows, seconds, trainer.state.global_step // settings.steps_per_update, snapshots, reward.samples, list(trainer.state.log_history))
    return trainer, stats


# ----------------------------------------------------------------------------------------------------- results


def stage_metrics(
    stats: RLOOStats,
    out_dir: str | Path,
    *,
    adapter_dir: str | Path,
    settings: RLOOSettings,
    prompts: PromptSet,
    reward: Mapping[str, str],
    data_skipped: Mapping[str, int] | None = None,
    peak_memory_mb: float | None = None,
    processes: int = 1,
    started: float | None = None,
    progress=None,
) -> dict[str, Any]:
    """What the RLOO stage records, the same whether a notebook or a script ran it. ``reward`` is what
    :func:`utils.reward_functions.stage_reward` returned beside the function: ``reward_model_dir`` or ``reward_function``."""
    from utils.artifacts import record_path

    log = stats.train_log
    if not log:
        raise ValueError("no RLOO update was logged")
    metrics = {
        "updates": stats.updates,
        "reward_mean_first": log[0]["reward_mean"],
        "reward_mean_last": log[-1]["reward_mean"],
        "kl_last": log[-1]["kl"],  # nats per reply, as PPO's
        "reward_means": [row["reward_mean"] for row in log],
        "kl_per_update": [row["kl"] for row in log],
        "train_log": list(log),  # per update: trl's logs under the kit's names (utils.rloo.update_row)
        "train_seconds": stats.train_seconds,
        "seconds_per_update": stats.train_seconds / max(stats.updates, 1),
        "beta": settings.beta,
        "replies_per_prompt": settings.replies_per_prompt,
        "prompts_per_update": settings.prompts_per_update,
        "learning_rate": settings.learning_rate,
        **dict(reward),
        "prompts": len(prompts),
        "prompts_too_long": prompts.too_long,
        "data_skipped": dict(data_skipped or {}),  # records the readers skipped (on_error: skip), by reason
        "adapter_dir": record_path(out_dir, adapter_dir),
        "snapshots": {update: record_path(out_dir, path) for update, path in stats.snapshots.items()},
        "peak_memory_mb": peak_memory_mb,
        "processes": processes,
        # Progress on the fixed held-out prompts (utils.fixed_set): gains paired by prompt against update 0 (SFT).
        "progress": progress.points if progress is not None else [],
        "fixed_set": progress.save(out_dir).name if progress is not None and progress.samples else None,
        "ended_fraction_first": log[0]["ended_fraction"],
        "ended_fraction_last": log[-1]["ended_fraction"],
    }
    if started is not None:
        metrics["seconds"] = time.time() - started
    return metrics


def compare_replies(policy, tokenizer, prompts: Sequence[Conversation], reward_fn: RewardFn, max_new_tokens: int, seed: int = 0):
    """A DataFrame: each prompt answered by the SFT model (π_ref) and by the trained policy, with the same seeded
    sampling from π itself, and each reply's reward."""
    import pandas as pd

    from utils.generation import SamplingConfig, generate_replies

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, min_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0)
    with as_reference(policy):
        sft = generate_replies(policy, tokenizer, prompts, sampling, seed=seed)
    rloo = generate_replies(policy, tokenizer, prompts, sampling, seed=seed)
    return pd.DataFrame({"prompt": [p[-1]["content"][:200] for p in prompts], "SFT": sft, "reward SFT": list(reward_fn(prompts, sft)),
                         "RLOO": rloo, "reward RLOO": list(reward_fn(prompts, rloo))}).round(3)


def plot_training(train_log: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Per update: the reward (mean ± std over the replies), the KL to the SFT model, reply length and share ended."""
    import matplotlib.pyplot as plt

    updates = [row["update"] for row in train_log]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    mean = [row["reward_mean"] for row in train_log]
    std = [row["reward_std"] for row in train_log]
    axes[0].plot(updates, mean, "-o", ms=3)
    axes[0].fill_between(updates, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    axes[0].set(xlabel="update", title="reward of the sampled replies (mean ± std)")
    axes[1].plot(updates, [row["kl"] for row in train_log], "-o", ms=3)
    axes[1].set(xlabel="update", title="KL to the SFT model (nats per reply)")
    axes[2].plot(updates, [row["response_length"] for row in train_log], "-o", ms=3, label="tokens per reply")
    axes[2].set(xlabel="update", title="reply length")
    twin = axes[2].twinx()
    twin.plot(updates, [row["ended_fraction"] for row in train_log], "--", color="grey", label="share ended")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("share that ended with a stop token")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
