"""Benchmarks through EleutherAI's lm-evaluation-harness ("lm-eval", Gao et al.), on the models stage 05 loaded.

The OpenAssistant paper (Köpf et al., 2023) reports its models on lm-eval tasks beside their Elo: multiple-choice
questions answered by **log-likelihood**, not by generation. Each choice is appended to the question and the model's
log-probability of the choice's tokens is summed; the choice with the highest sum is the model's answer:

* ``acc``: the share of questions where the right choice has the highest summed log-likelihood;
* ``acc_norm``: the same with each sum divided by the choice's length in bytes, so long choices are not
  penalised for having more tokens (lm-eval reports it where a task asks for it: hellaswag, ARC, piqa).

Nothing is sampled, so the scores are deterministic. The standard error is lm-eval's own: the sample standard
deviation of the per-question 0/1 scores over √n. Fine-tuning for chat (SFT, RLHF) can cost such scores: the
*alignment tax* (Askell et al., 2021; Ouyang et al., 2022), read here as a player's score minus the base's.

lm-eval's own tasks (hellaswag, arc_easy, ...) download their data from the Hugging Face hub. Offline profiles run
:data:`HH_TASK` instead, a task the kit builds from the HH-RLHF file it ships (:func:`write_hh_pairs_task`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml

from utils.model import chat_format

HH_TASK = "kit_hh_harmless_pairs"  # "kit_": built by this kit, not one of lm-eval's benchmarks
LOCAL_PREFIX = "kit_"
METRICS = ("acc", "acc_norm")  # what multiple-choice tasks report; the table leads with acc_norm where a task has it
BASE = "base"

Results = dict[str, dict[str, Any]]  # task -> {"n": int, "acc": {"value", "stderr"}, "acc_norm": {...}}


# ------------------------------------------------------------------------------------------ the kit's own task


def write_hh_pairs_task(pairs: Sequence[Any], folder: str | Path, tokenizer, max_tokens: int | None = None, seed: int = 0,
                        name: str = HH_TASK) -> dict[str, Any]:
    """Write an lm-eval task of HH-RLHF preference pairs into ``folder``: ``<name>.yaml`` and ``<name>.jsonl``.

    **Not a standard benchmark.** It asks "does the model give the preferred reply a higher likelihood?": the
    context is the conversation before the last reply, rendered in the model's own chat format
    (:func:`utils.model.chat_format.render`, the format SFT trained on, ending with the assistant tag), and the two
    choices are the reply people preferred (the gold one) and the one they rejected. With ``acc`` the summed
    log-likelihood decides, which favours the shorter reply; ``acc_norm`` divides by length first.

    ``pairs`` are :class:`utils.oasst.Pair` (``prompt``, ``chosen``, ``rejected``), meant to be the evaluation
    part of the shipped file (:func:`utils.reward.stage.split_hh`), which no reward model trained on. A pair
    whose context and longer reply exceed ``max_tokens`` tokens is left out (lm-eval would cut its context from
    the left); so is one with an empty reply; both are counted. Which of the two choices comes first is drawn per pair with
    ``seed`` (the gold index is recorded), so a tie between the two log-likelihoods, which lm-eval resolves
    for the first choice, favours neither.

    The data file is read by ``datasets``' local ``json`` builder from its absolute path: no hub, works with
    ``HF_DATASETS_OFFLINE=1``. Returns ``{"task", "pairs", "too_long", "empty_reply", "yaml", "data"}``: pairs + too_long + empty_reply
    = the pairs given.
    """
    if not name.startswith(LOCAL_PREFIX):
        raise ValueError(f"a kit task's name starts with {LOCAL_PREFIX!r} (nobody should take it for a standard benchmark), got {name!r}")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    docs, too_long, empty = [], 0, 0
    for pair in pairs:
        if not pair.chosen.strip() or not pair.rejected.strip():
            empty += 1
            continue
        context = chat_format.render(pair.prompt, tokenizer, add_generation_prompt=True)
        if max_tokens is not None:
            longest = max(len(tokenizer(context + reply, add_special_tokens=False)["input_ids"]) for reply in (pair.chosen, pair.rejected))
            if longest > max_tokens:
                too_long += 1
                continue
        gold = rng.randrange(2)
        choices = [pair.rejected, pair.rejected]
        choices[gold] = pair.chosen
        docs.append({"context": context, "choices": choices, "gold": gold})
    if not docs:
        raise ValueError(f"{name}: no pair fits in {max_tokens} tokens ({too_long} too long, {empty} with an empty reply, "
                         f"{len(pairs)} given)")
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    config = {
        "task": name,
        "dataset_path": "json",  # datasets' local JSON-lines builder
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": "",  # the reply follows the assistant tag directly, as in training
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS],
        # Not "description": lm-eval would put that text in front of every context.
        "metadata": {"version": 1.0, "note": "NOT a standard benchmark: does the model give the preferred HH-RLHF reply "
                                              "a higher likelihood than the rejected one (built by utils.evaluate.lm_harness)"},
    }
    yaml_path = folder / f"{name}.yaml"
    yaml_path.write_text("# Written by utils.evaluate.lm_harness.write_hh_pairs_task: a kit task, NOT a standard benchmark.\n"
                         + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return {"task": name, "pairs": len(docs), "too_long": too_long, "empty_reply": empty, "yaml": str(yaml_path), "data": str(data)}


def local_tasks(tasks: Sequence[str]) -> list[str]:
    """The kit's own tasks among ``tasks`` (their names start with ``kit_``); the rest are lm-eval's."""
    unknown = [t for t in tasks if t.startswith(LOCAL_PREFIX) and t != HH_TASK]
    if unknown:
        raise ValueError(f"unknown kit task(s) {unknown}: the kit builds {HH_TASK!r} only")
    return [t for t in tasks if t.startswith(LOCAL_PREFIX)]


# ------------------------------------------------------------------------------------------ running lm-eval


@contextlib.contextmanager
def _quiet_and_seeded() -> Iterator[None]:
    """lm-eval without its chatter, and the caller's random state as it was.

    lm-eval logs every step and draws progress bars on stderr; both are silenced for the call (stderr is
    replayed if the call fails). ``simple_evaluate`` seeds Python's, NumPy's and torch's generators; they are
    restored after, so the notebook's later cells draw what they would have drawn without this one.
    """
    import datasets

    logger = logging.getLogger("lm_eval")
    level, bars = logger.level, datasets.is_progress_bar_enabled()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run_tasks(model, tokenizer, tasks: Sequence[str], limit: int | None = None, batch_size: int = 16,
              include_path: str | Path | None = None) -> Results:
    """lm-eval's ``simple_evaluate`` on an already loaded model: ``{task: {"n", "acc": {"value", "stderr"}, ...}}``.

    The model is wrapped in lm-eval's ``HFLM`` as it is (adapters, quantization and device untouched; no chat
    template, as the paper's benchmark column ran them). ``limit``: the first this many examples of each task
    (None: all). ``include_path``: a folder of task YAMLs (the kit's own tasks) besides lm-eval's; lm-eval's
    ~15,000 built-in task files are indexed only when a task is not found there (about 5 s).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = list(tasks)
    folder = Path(include_path) if include_path and Path(include_path).is_dir() else None
    own = {p.stem for p in folder.glob("*.yaml")} if folder else set()
    manager = TaskManager(include_path=str(folder) if folder else None, include_defaults=not set(tasks) <= own)
    with _quiet_and_seeded():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False)
    results = {}
    for task in tasks:
        row = out["results"][task]
        entry: dict[str, Any] = {"n": int(out["n-samples"][task]["effective"])}
        for metric in METRICS:
            if f"{metric},none" in row:
                stderr = row.get(f"{metric}_stderr,none")
                entry[metric] = {"value": float(row[f"{metric},none"]),
                                 "stderr": float(stderr) if isinstance(stderr, (int, float)) else float("nan")}
        results[task] = entry
    return results


def evaluate_players(models, players: Sequence[str], tasks: Sequence[str], limit: int | None = None, batch_size: int = 16,
                     include_path: str | Path | None = None) -> dict[str, Results]:
    """:func:`run_tasks` for each of ``players`` (names in ``models.names``: base, sft, ppo, dpo, rloo), switching
    adapters on the one shared model with :func:`utils.evaluate.models.use`: ``{player: {task: {...}}}``."""
    from utils.evaluate.models import use

    results = {}
    for name in players:
        with use(models, name) as model:
            results[name] = run_tasks(model, models.tokenizer, tasks, limit=limit, batch_size=batch_size, include_path=include_path)
    return results


# ------------------------------------------------------------------------------------------ reading the results


def lead_metric(entry: Mapping[str, Any]) -> str:
    """``acc_norm`` where the task reports it (length-normalised, what the leaderboards quote), else ``acc``."""
    return "acc_norm" if "acc_norm" in entry else "acc"


def with_diffs(results: Mapping[str, Results], base: str = BASE) -> dict[str, Results]:
    """``results`` with, per metric, ``diff_to_base`` (player minus base; negative: an alignment tax) and its
    standard error ``diff_stderr = sqrt(stderr_player² + stderr_base²)``.

    That standard error treats the two scores as independent. They are not: both models answered the same
    questions, and a paired comparison would cancel the questions' shared difficulty, so this one is
    conservative (too wide, never too narrow). The base against itself is exactly 0 ± 0. Without a base
    player, or for a task the base did not run, the differences are None.
    """
    out: dict[str, Results] = {}
    for player, tasks in results.items():
        out[player] = {}
        for task, entry in tasks.items():
            ref = results.get(base, {}).get(task)
            new = {"n": entry["n"], "lead": lead_metric(entry)}
            for metric in METRICS:
                if metric not in entry:
                    continue
                m = dict(entry[metric])
                if ref is None or metric not in ref:
                    m["diff_to_base"] = m["diff_stderr"] = None
                elif player == base:
                    m["diff_to_base"] = m["diff_stderr"] = 0.0
                else:
                    m["diff_to_base"] = m["value"] - ref[metric]["value"]
                    m["diff_stderr"] = math.hypot(m["stderr"], ref[metric]["stderr"])
                new[metric] = m
            out[player][task] = new
    return out


def harness_rows(results: Mapping[str, Results], base: str = BASE) -> list[dict[str, Any]]:
    """Table rows, one per task and player: the lead metric (:func:`lead_metric`) as score ± standard error,
    the difference to the base ± its (conservative) standard error (:func:`with_diffs`), and n."""
    diffs = with_diffs(results, base)
    rows = []
    tasks = list(dict.fromkeys(t for player in diffs.values() for t in player))
    for task in tasks:
        for player, by_task in diffs.items():
            if task not in by_task:
                continue
            entry = by_task[task]
            metric = lead_metric(entry)
            m = entry[metric]
            vs = "" if player == base or m["diff_to_base"] is None else f"{m['diff_to_base']:+.3f} ± {m['diff_stderr']:.3f}"
            rows.append({"task": task, "metric": metric, "model": player, "score": f"{m['value']:.3f} ± {m['stderr']:.3f}",
                         f"vs {base}": vs, "n": entry["n"]})
    return rows
