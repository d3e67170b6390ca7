"""Stage 05's parameters, each default written here once (the notebook's parameters cell is generated from this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.params import DataParams, param


@dataclass
class EvaluateParams(DataParams):
    """Base, SFT and the aligned models on held-out prompts: rewards under every judge, win rates, Elo, KL, perplexity."""

    prompt_lottery_path: str = param("data/prompt_lottery_en_250.jsonl", "OpenAssistant's prompt lottery, a second prompt set")
    hh_path: str = param("data/hh_rlhf_harmless_base_test_part1.jsonl.gz", "HH-RLHF harmless pairs (Bai et al., 2022)")
    hh_eval_fraction: float = param(0.5, "as stage 03's: the HH prompts come from the lines no reward model trained on")
    sampling_report_paths: list[str] = param(
        ["data/oa_sampling_reports/2023-03-01_pythia-1b-deduped-sft_sampling.json",
         "data/oa_sampling_reports/2023-03-01_pythia-12b-deduped-sft_sampling.json"],
        "OpenAssistant's own models' answers to the same prompts: players beside ours")
    report_configs: list[str] = param(["k50"], "which of the reports' sampling configs join the tournament")
    sampling_configs: list[str] = param(["k50"], "presets in utils.model.generation.PRESETS; every (model, config) is a player")
    max_new_tokens: int | None = param(128, "overrides the presets' own; None keeps them")
    n_heldout_prompts: int = param(60, "of the 100 held-out root prompts")
    n_lottery_prompts: int = param(40, "of the 250 prompt-lottery prompts")
    samples_per_prompt: int = param(1, "answers per prompt and sampling config (greedy answers once)")
    best_of_n: list[int] = param([4, 8], "best-of-n players: n replies sampled from SFT, the proxy's favourite answers ([]: none)")
    n_hh_prompts: int = param(24, "HH-RLHF harmless prompts ...")
    max_hh_prompt_tokens: int = param(192, "... that fit in this many tokens")
    lm_eval_tasks: list[str] = param(
        ["kit_hh_harmless_pairs"], 'lm-eval tasks: "kit_" ones are built here from shipped data, others are lm-eval\'s own (hub download)')
    lm_eval_limit: int | None = param(100, "examples per task (None: all)")
    lm_eval_batch_size: int = param(16, "examples per forward pass")
    lm_eval_max_tokens: int | None = param(
        256, "the kit task keeps the pairs whose context and longer reply fit (None: the model's context)")
    n_kl_prompts: int = param(32, "held-out prompts the KL to SFT and to the base is measured on, by Monte Carlo")
    kl_max_new_tokens: int = param(64, "the length of those samples")
    n_fixed_prompts: int = param(24, "the reward-against-KL picture: held-out prompts (the RL stages' fixed set where they ran)")
    fixed_replies_per_prompt: int = param(
        4, "DPO's replies to each; SFT answers lcm(this, *kl_best_of_n) times (best-of-n picks among those)")
    fixed_max_new_tokens: int | None = param(None, "None: the RL stages' own max_new_tokens (their fixed set was sampled with it), else 96")
    kl_best_of_n: list[int] = param([2, 4, 8], "best-of-n points of the picture (KL: the analytic bound log n - (n-1)/n)")
    n_ppl_threads: int | None = param(40, "held-out SFT threads for perplexity (None: all)")
    ppl_max_length: int | None = param(None, "threads keep their first this many tokens (None: the model's context)")
    batch_size: int = param(32, "replies sampled at once")
    score_batch_size: int = param(32, "answers per reward-model forward pass")
    bootstrap_rounds: int = param(1000, "resamples behind every interval")
    elo_k: float = param(4.0, "Elo's step per game")
    tie_margin: float = param(0.0, "rewards closer than this are a draw")
    n_sample_rows: int = param(4, "held-out prompts shown with a few players' whole answers (samples.md has them all)")
    quantization: Literal["nf4", "none"] | None = param(None, 'None: as stage 02 trained ("nf4" or "none")')
    judges: list[str] = param(
        ["proxy", "judge"], '"proxy": the reward model PPO trained against; "judge": stage 03\'s independent one; or a hub reward model')
