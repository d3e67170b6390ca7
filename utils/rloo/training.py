"""RLOO's training: the prompts in the kit's chat format, the reward as trl calls it, trl's ``RLOOTrainer`` with the
kit's snapshots and per-update log (the module notes are :mod:`utils.rloo`'s)."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from utils.model import chat_format
from utils.dpo.policy import POLICY, as_reference, sft_as_reference
from utils.pipeline.checkpoints import export_snapshots, snapshot_path
from utils.rloo.params import RLOOParams

Conversation = list[dict[str, Any]]
RewardFn = Callable[[list[Conversation], list[str]], Sequence[float]]
SNAPSHOTS_DIR = "snapshots"
PROGRESS_STATE = "fixed_set_state.json"


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
    kit's way (:func:`utils.model.chat_format.decode_reply`: up to the stop token, special tokens dropped), so ``fn`` sees
    what stage 05 and PPO's reward see. A wrong number of scores, or a NaN, stops training in one line. A few
    (prompt, reply, score) per update are kept in ``samples``.
    """

    def __init__(self, fn: RewardFn, prompts: PromptSet, tokenizer, samples_per_update: int = 3,
                 steps_per_update: int = 1) -> None:
        self.fn, self.prompts, self.tokenizer = fn, prompts, tokenizer
        self.steps_per_update = steps_per_update  # trl's optimizer steps per kit update (module note 5)
        spec = getattr(fn, "spec", None)  # set by utils.rl.reward_functions on a function named by a stage parameter
        # The name errors give, and trl's log key (rewards/<name>/mean).
        self.__name__ = f"reward_function {spec!r}" if spec else getattr(fn, "__name__", "reward")
        self.samples_per_update = samples_per_update
        self.samples: list[dict[str, Any]] = []

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], prompt_index: list[int],
                 trainer_state=None, **_: Any) -> list[float]:
        from utils.rl.reward_functions import checked_scores

        conversations = [self.prompts.conversations[i] for i in prompt_index]
        replies = [chat_format.decode_reply(ids, self.tokenizer) for ids in completion_ids]
        scores = checked_scores(self.fn, conversations, replies, name=self.__name__)
        update = trainer_state.global_step // self.steps_per_update + 1 if trainer_state is not None else None
        self.samples += [{"update": update, "prompt": c[-1]["content"], "reply": r, "reward": s}
                         for c, r, s in list(zip(conversations, replies, scores))[: self.samples_per_update]]
        return scores


# ----------------------------------------------------------------------------------------------------- trainer


def _trainer_class(algorithm: str = "rloo"):
    """trl's RLOOTrainer (or GRPOTrainer, module note 8), taught to take prompts tokenized by the kit (built on first
    use: trl imports slowly)."""
    from trl import GRPOTrainer, RLOOTrainer

    class KitTrainer(GRPOTrainer if algorithm == "grpo" else RLOOTrainer):
        """trl's trainer with the prompts' token ids from :func:`encode_prompts` (see the module's note 2).
        Everything else, sampling, the baseline and the loss, is trl's."""

        kit_prompt_ids: dict[str, list[int]] | None = None  # rendered prompt -> its ids, set by make_trainer

        def _tokenize_prompts(self, prompts: list):
            return [list(self.kit_prompt_ids[p]) for p in prompts], None, {}  # (ids, no images, no multimodal fields)

    return KitTrainer


def trainer_args(params: RLOOParams, output_dir: str, save_steps: int = 0):
    """trl's ``RLOOConfig`` (``GRPOConfig`` for GRPO) for the stage's parameters: one update per generation batch,
    sampling from π itself, quiet."""
    from trl import GRPOConfig, RLOOConfig

    from utils.model import distributed
    from utils.model.modeling import default_device, trainer_device_args

    processes = distributed.world_size()  # under accelerate launch each process samples its share of an update
    steps = params.steps_per_update
    # No mini_batch_size: each process's share of one optimizer step's replies in one pass.
    micro = params.mini_batch_size or max(1, params.replies_per_update // (steps * processes))
    if params.replies_per_update % (micro * processes * steps):
        raise ValueError(f"the {params.replies_per_update} replies of an update do not split into {steps} steps of "
                         f"micro-batches of {micro} on {processes} processes")
    micro_batches = params.replies_per_update // (micro * processes)  # per process and update
    config = GRPOConfig if params.algorithm == "grpo" else RLOOConfig  # GRPO's own settings are trl's (module note 8)
    return config(
        output_dir=output_dir,
        max_steps=params.updates * steps,  # trl counts optimizer steps; the kit counts updates (module note 5)
        per_device_train_batch_size=micro,
        steps_per_generation=micro_batches,  # one generation batch = one update's replies
        gradient_accumulation_steps=micro_batches // steps,
        num_generations=params.replies_per_prompt,
        num_iterations=1,  # every batch is sampled fresh: on-policy REINFORCE (module note 5)
        max_completion_length=params.max_new_tokens,
        temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,  # π itself (module note 4)
        beta=params.beta,
        learning_rate=params.learning_rate,
        lr_scheduler_type="constant",
        adam_epsilon=1e-5,  # as the kit's PPO (Huang et al. 2022, detail 3)
        max_grad_norm=params.max_grad_norm,
        gradient_checkpointing=params.gradient_checkpointing,
        disable_dropout=True,
        logging_steps=steps,  # one log per update: its generation's rewards with the mean of its steps' statistics
        **trainer_device_args(default_device(), params.seed, save_steps * steps),
    )


def save_snapshot(model, folder: str | Path, update: int) -> Path:
    """The policy adapter alone, as a plain peft folder: stage 05 loads it on the base like the final adapter."""
    path = snapshot_path(folder, update)
    model.save_pretrained(str(path), selected_adapters=[POLICY])
    return path


def measure_progress(model, progress, update: int) -> None:
    """The fixed set at a snapshot (:mod:`utils.rl.fixed_set`): the policy is the active ``"default"`` adapter, π_ref the
    frozen ``"ref"`` copy of SFT. Sampled in eval mode (the KV cache), then back to training."""
    from utils.rl.fixed_set import acting

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


def make_trainer(model, tokenizer, prompts: PromptSet, reward: TrlReward, params: RLOOParams, sft_adapter_dir: str | Path,
                 output_dir: str, callbacks: Sequence = (), save_steps: int = 0):
    """trl's RLOO trainer on the policy ``model`` (a peft model whose ``"default"`` adapter is the SFT adapter), the
    reference by adapter switch (module note 1)."""
    from transformers import PrinterCallback

    from utils.ppo.model import disable_dropout

    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: call utils.model.chat_format.add_special_tokens(tokenizer) first")
    if len(prompts) < params.prompts_per_update:  # trl's sampler drops an incomplete batch: there would be no update
        raise ValueError(f"{len(prompts)} prompts fit, fewer than prompts_per_update={params.prompts_per_update}")
    model.generation_config.eos_token_id = chat_format.stop_token_ids(tokenizer)  # trl stops at these (module note 3)
    disable_dropout(model)  # LoRA's and attention's too: the log-probs trained on are those that sampled
    cls = _trainer_class(params.algorithm)
    trainer = cls(model=model, reward_funcs=[reward], args=trainer_args(params, output_dir, save_steps),
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


def run_training(model, tokenizer, prompts: PromptSet, reward_fn: RewardFn, params: RLOOParams, sft_adapter_dir: str | Path,
                 out_dir: str | Path, *, snapshot_updates: Sequence[int] = (), checkpoint_root: str | Path | None = None,
                 log: Callable[[str], None] | None = print, progress=None):
    """Build the trainer and train: ``(trainer, stats)``.

    The policy adapter is kept at ``snapshot_updates`` (0: before the first update) and copied to
    ``out_dir/snapshots``; with ``progress`` (a :class:`utils.rl.fixed_set.FixedSetProgress`) the fixed held-out prompts
    are answered at each of them. With ``params.save_steps > 0`` trl checkpoints go to a folder of ``checkpoint_root`` named after the
    settings, prompts, reward and snapshot schedule (another configuration never resumes them), every ``save_steps``
    updates; a killed run resumes from the last complete one, and the snapshots taken before it are kept there too.
    """
    from utils.pipeline import checkpoints

    save_steps = params.save_steps
    saving = save_steps > 0 and checkpoint_root is not None
    snapshot_updates = sorted({int(u) for u in snapshot_updates})
    with tempfile.TemporaryDirectory(prefix="rloo-trainer-") as scratch:
        reward = TrlReward(reward_fn, prompts, tokenizer, steps_per_update=params.steps_per_update)
        key = checkpoints.run_key(params.training(), prompts.ids, getattr(reward_fn, "fingerprint", reward.__name__), snapshot_updates)
        save_dir = Path(checkpoint_root) / key if saving else Path(scratch)
        callback = _callback(model, snapshot_updates, save_dir / SNAPSHOTS_DIR, log, progress, params.steps_per_update)
        trainer = make_trainer(model, tokenizer, prompts, reward, params, sft_adapter_dir, str(save_dir), [callback],
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
    stats = RLOOStats(callback.rows, seconds, trainer.state.global_step // params.steps_per_update, snapshots, reward.samples, list(trainer.state.log_history))
    return trainer, stats
