"""Stage 05 in steps, in the order notebook 05 calls them (``notebooks/05_evaluate.ipynb``), and :func:`stage_metrics`, the
one writer of its metrics.json. Every step reads its settings from :class:`utils.evaluate.params.EvaluateParams`; the
notebook shows each step's result before the next."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from utils.evaluate.params import EvaluateParams


@dataclass
class Prompts:
    """Step 1, :func:`load_prompts`: the held-out root prompts and the prompt lottery's, each once."""

    split: Any
    heldout: list[str]  # keys: the whitespace-normalised texts (utils.evaluate.sampling_reports.prompt_key)
    lottery: list[str]
    lottery_report: Any  # what was read of the lottery file, and skipped

    @property
    def texts(self) -> dict[str, str]:
        """key -> the text the models see."""
        return {k: k for k in self.heldout + self.lottery}


def load_prompts(params: EvaluateParams) -> Prompts:
    from utils.oasst import Report, read_prompts
    from utils.evaluate.sampling_reports import prompt_key

    split = params.load_split()
    lottery_report = Report()
    heldout = list(dict.fromkeys(prompt_key(t.prompt["text"]) for t in split.heldout))[: params.n_heldout_prompts]
    pool = dict.fromkeys(map(prompt_key, read_prompts(params.prompt_lottery_path, on_error=params.on_error, report=lottery_report)))
    lottery = [k for k in pool if k not in heldout][: params.n_lottery_prompts]
    return Prompts(split, heldout, lottery, lottery_report)


def sampling_configs(params: EvaluateParams) -> dict[str, Any]:
    """Step 2: the sampling presets every model answers with, ``max_new_tokens`` set where given."""
    from utils.model.generation import sampling_preset

    overrides = {"max_new_tokens": params.max_new_tokens} if params.max_new_tokens else {}
    return {name: sampling_preset(name, **overrides) for name in params.sampling_configs}


def sample_players(params: EvaluateParams, models, prompts: Prompts, configs: Mapping[str, Any]) -> tuple[dict, dict]:
    """Step 3: ``(answers, model_of)``: every (model, preset) is a player; ``answers[player][prompt]`` its answers,
    ``model_of[player]`` its model."""
    from utils.evaluate.answers import generate_answers
    from utils.evaluate.models import use
    from utils.model.modeling import Countdown

    answers, model_of = {}, {}
    countdown = Countdown(len(models.names) * len(configs), "players")  # a line per player: the cell is minutes long
    for name in models.names:
        with use(models, name) as model:
            for cfg, sampling in configs.items():
                player = f"{name} ({cfg})"
                model_of[player] = name
                answers[player] = generate_answers(model, models.tokenizer, list(prompts.texts.values()), sampling,
                                                   samples=params.samples_per_prompt, batch_size=params.batch_size, seed=params.seed)
                countdown.tick(f"{player}: answered")
    return answers, model_of


def best_of_n(params: EvaluateParams, run_dir: str | Path, models, prompts: Prompts, configs: Mapping[str, Any],
              judges: Mapping[str, Any]) -> tuple[dict, dict]:
    """Step 4: ``(answers, best_of)``: the best-of-n players (:mod:`utils.evaluate.best_of_n`), ``best_of[player]`` its n."""
    from utils.evaluate.best_of_n import best_of_n_players

    return best_of_n_players(models, list(prompts.texts.values()), configs, params.best_of_n, judges, run_dir,
                             answers_per_prompt=params.samples_per_prompt, batch_size=params.batch_size,
                             score_batch_size=params.score_batch_size, seed=params.seed)


def external_players(params: EvaluateParams, prompts: Prompts) -> dict[str, dict[str, list[str]]]:
    """Step 5: OpenAssistant's own models' answers (its sampling reports) to the held-out prompts we share."""
    from utils.evaluate.sampling_reports import load_players

    external = load_players(params.sampling_report_paths, params.report_configs, samples=params.samples_per_prompt)
    return {p: {k: v for k, v in a.items() if k in prompts.heldout} for p, a in external.items()}


def score(params: EvaluateParams, judges: Mapping[str, Any], prompts: Prompts, players: Mapping[str, Any]) -> tuple[dict, dict]:
    """Step 6: ``(scores, summaries)``: ``scores[judge][player][prompt]``, and per judge and player the mean reward
    with its interval (:func:`utils.evaluate.answers.summarize`)."""
    from utils.evaluate.answers import summarize
    from utils.reward.judges import score_players

    scores = score_players(judges, prompts.texts, players, batch_size=params.score_batch_size)
    summaries = {j: {p: summarize(players[p], s, prompts.heldout, rounds=params.bootstrap_rounds, seed=params.seed)
                     for p, s in by_player.items()} for j, by_player in scores.items()}
    return scores, summaries


@dataclass
class Lengths:
    """Step 7, :func:`lengths`: words per answer, the lead judge's rewards, and the win rates with length controlled."""

    words: dict[str, dict[str, list[int]]]  # player -> prompt -> words per answer
    lengths: dict[str, list[int]]  # player -> words of every answer
    rewards: dict[str, list[float]]  # player -> the lead judge's reward of every answer
    sft_player: str
    base_player: str
    controlled: dict  # [judge][player] against SFT: lc_win_rate, ci, win_rate, win_rate_ci, length_coef
    controlled_base: dict  # the same against the base model


def lengths(params: EvaluateParams, scores: Mapping[str, Any], players: Mapping[str, Any], lead: str) -> Lengths:
    from utils.evaluate.answers import word_count
    from utils.evaluate.length_control import length_controlled_table

    words = {p: {k: [word_count(x) for x in v] for k, v in a.items()} for p, a in players.items()}
    lengths = {p: [n for v in w.values() for n in v] for p, w in words.items()}
    rewards = {p: [r for v in s.values() for r in v] for p, s in scores[lead].items()}
    sft_player, base_player = (f"{m} ({params.sampling_configs[0]})" for m in ("sft", "base"))
    kwargs = dict(tie_margin=params.tie_margin, rounds=params.bootstrap_rounds, seed=params.seed)
    return Lengths(words, lengths, rewards, sft_player, base_player,
                   length_controlled_table(scores, words, sft_player, list(players), **kwargs),
                   length_controlled_table(scores, words, base_player, list(players), **kwargs))


@dataclass
class KL:
    """Step 8, :func:`kl`: the KL of each trained model to where it started, on held-out prompts that fit."""

    prompts: list
    too_long: int
    estimates: dict


def kl(params: EvaluateParams, models, prompts: Prompts) -> KL:
    from utils.evaluate.answers import as_prompt, fitting_prompts
    from utils.evaluate.kl import kl_estimates

    # The same held-out prompts, those that leave room for the reply in the model's context.
    fitting, too_long = fitting_prompts([as_prompt(k) for k in prompts.heldout], models.tokenizer,
                                        models.context - params.kl_max_new_tokens, params.n_kl_prompts)
    return KL(fitting, too_long, kl_estimates(models, fitting, params.kl_max_new_tokens, batch_size=params.batch_size,
                                              rounds=params.bootstrap_rounds, seed=params.seed))


@dataclass
class RewardAgainstKL:
    """Step 9, :func:`reward_against_kl`: the RL stages' snapshots, best-of-n and DPO on one fixed set: gain against
    KL, paired by prompt against SFT; and the check the RL issue asks for (:func:`utils.evaluate.reward_vs_kl.rl_check`)."""

    curve: list
    samples: list
    prompts: list
    max_new_tokens: int
    checks: list


def reward_against_kl(params: EvaluateParams, run_dir: str | Path, models, judges: Mapping[str, Any], prompts: Prompts) -> RewardAgainstKL:
    from utils.pipeline import stages
    from utils.pipeline.artifacts import has_run, read_metrics
    from utils.evaluate.answers import as_prompt
    from utils.evaluate.reward_vs_kl import reward_vs_kl, rl_check, stage_samples
    from utils.rl.fixed_set import fixed_prompts

    rl_samples = stage_samples(run_dir, stages.PPO) + stage_samples(run_dir, stages.RLOO)
    tokens = params.fixed_max_new_tokens or (rl_samples[0].max_new_tokens if rl_samples else 96)
    fixed = ([as_prompt(p) for p in rl_samples[0].prompts] if rl_samples
             else fixed_prompts(prompts.split.heldout, models.tokenizer, params.n_fixed_prompts, 256))
    curve, samples = reward_vs_kl(models, judges, rl_samples, fixed, best_of=params.kl_best_of_n,
                                  replies_per_prompt=params.fixed_replies_per_prompt, max_new_tokens=tokens,
                                  batch_size=params.batch_size, score_batch_size=params.score_batch_size, seed=params.seed)
    target_kl = read_metrics(run_dir, stages.PPO).get("target_kl") if has_run(run_dir, stages.PPO) else None
    return RewardAgainstKL(curve, samples, fixed, tokens, rl_check(curve, target_kl))


@dataclass
class Perplexity:
    """Step 10, :func:`perplexity`: each model's perplexity on held-out SFT threads (their assistant tokens)."""

    by_model: dict[str, float]
    threads: int
    tokens: int


def perplexity(params: EvaluateParams, models, prompts: Prompts) -> Perplexity:
    from utils.evaluate.models import use
    from utils.evaluate.perplexity import perplexity as model_perplexity
    from utils.oasst import sft_conversations

    threads = sft_conversations(prompts.split.eval)[: params.n_ppl_threads]
    by_model, tokens = {}, 0
    for name in models.names:
        with use(models, name) as model:
            by_model[name], tokens = model_perplexity(model, models.tokenizer, threads, batch_size=params.batch_size,
                                                      max_length=params.ppl_max_length)
    return Perplexity(by_model, len(threads), tokens)


@dataclass
class Harmless:
    """Step 11, :func:`harmless`: every model on HH-RLHF's harmless prompts that no reward model trained on."""

    results: dict  # model -> rewards per judge, refusal rate
    prompts: list
    too_long: int
    eval_pairs: list  # the HH file's evaluation part (lm-eval's kit task is built from it)
    report: Any  # what was read of the HH file, and skipped


def harmless(params: EvaluateParams, models, configs: Mapping[str, Any], judges: Mapping[str, Any]) -> Harmless:
    from utils.evaluate.answers import fitting_prompts
    from utils.evaluate.harmless import harmless_answers
    from utils.oasst import Report, read_hh_pairs
    from utils.reward.stage import split_hh

    report = Report()
    _, hh_eval = split_hh(read_hh_pairs(params.hh_path, on_error=params.on_error, report=report), params.hh_eval_fraction,
                          params.seed)  # never trained on
    hh_prompts, too_long = fitting_prompts([p.prompt for p in hh_eval], models.tokenizer, params.max_hh_prompt_tokens,
                                           params.n_hh_prompts)
    results = harmless_answers(models, hh_prompts, configs[params.sampling_configs[0]], judges, batch_size=params.batch_size,
                               score_batch_size=params.score_batch_size, rounds=params.bootstrap_rounds, seed=params.seed)
    return Harmless(results, hh_prompts, too_long, hh_eval, report)


def lm_eval(params: EvaluateParams, models, hh: Harmless, out_dir: str | Path, log=print) -> dict:
    """Step 12: lm-eval's tasks on every model (``{}`` without tasks): ``model -> task -> {"n", "acc": {...}, ...}``."""
    from utils.evaluate.lm_harness import HH_TASK, evaluate_players, local_tasks, write_hh_pairs_task

    if not params.lm_eval_tasks:
        return {}
    task_dir = Path(out_dir) / "lm_eval_tasks"
    if HH_TASK in local_tasks(params.lm_eval_tasks):
        max_tokens = params.lm_eval_max_tokens or models.context
        task = write_hh_pairs_task(hh.eval_pairs, task_dir, models.tokenizer, max_tokens=max_tokens, seed=params.seed)
        log(f"{HH_TASK}: {task['pairs']} pairs of the HH evaluation part fit in {max_tokens} tokens ({task['too_long']} longer left out)")
    return evaluate_players(models, models.names, params.lm_eval_tasks, limit=params.lm_eval_limit,
                            batch_size=params.lm_eval_batch_size, include_path=task_dir)


def stage_metrics(
    params: EvaluateParams,
    *,
    judges: Mapping[str, Any],
    prompts: Prompts,
    configs: Mapping[str, Any],
    players: Mapping[str, Any],
    external: Mapping[str, Any],
    model_of: Mapping[str, str],
    best_of: Mapping[str, int],
    summaries: Mapping[str, Any],
    tournaments: Mapping[str, Any],
    lengths: Lengths,
    kl: KL,
    curve: RewardAgainstKL,
    perplexity: Perplexity,
    hh: Harmless,
    lm_eval: Mapping[str, Any],
    table: list,
    costs: Mapping[str, Any],
    started: float | None = None,
) -> dict[str, Any]:
    """What stage 05 records (every step's result, as the notebook showed it)."""
    from utils.evaluate.kl import KL_SAMPLING
    from utils.reward.judges import judges_metrics, lead_judge
    from utils.evaluate.lm_harness import with_diffs
    from utils.evaluate.results import players_summary

    lead = lead_judge(judges)
    return {
        "judges": judges_metrics(judges, tournaments, summaries),
        "length_controlled": lengths.controlled,  # [judge][player] against SFT: lc_win_rate, ci, win_rate, win_rate_ci, length_coef
        "length_controlled_base": lengths.controlled_base,  # the same against the base model
        "reward_vs_kl": curve.curve,
        "rl_check": curve.checks,
        "fixed_set": {"prompts": len(curve.prompts), "max_new_tokens": curve.max_new_tokens,
                      "sft_replies_per_prompt": curve.samples[0].k, "samples_file": "reward_vs_kl_samples.json"},
        "table": table,
        "models": players_summary(players, summaries[lead], model_of, best_of, perplexity.by_model, kl.estimates, hh.results, costs),
        "costs": costs,
        "best_of_n": best_of,
        "lm_eval": with_diffs(lm_eval),  # per model and task: n, and per metric value, stderr, diff_to_base, diff_stderr
        "sampling": {n: c.generate_kwargs() for n, c in configs.items()},
        "kl_sampling": {**KL_SAMPLING, "max_new_tokens": params.kl_max_new_tokens, "prompts": len(kl.prompts)},
        "prompts": {"heldout": len(prompts.heldout), "lottery": len(prompts.lottery), "hh": len(hh.prompts),
                    "ppl_threads": perplexity.threads, "ppl_tokens": perplexity.tokens, "ppl_max_length": params.ppl_max_length},
        "data_read": {"oasst": prompts.split.report.as_dict(), "prompt_lottery": prompts.lottery_report.as_dict(),
                      "hh": hh.report.as_dict()},
        "samples_per_prompt": params.samples_per_prompt,
        "external_players": {p: len(a) for p, a in external.items()},
        "samples_file": "samples.md",
        **({"seconds": time.time() - started} if started is not None else {}),
    }
