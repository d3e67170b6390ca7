"""The whole pipeline, executed through the runner on the micro profile: every stage leaves the
metrics its issue promises, the artifacts they point to exist, and the run report gathers them."""

from __future__ import annotations

import math

import pytest

from utils.pipeline.artifacts import read_metrics, stage_path

REQUIRED = {
    "01_explore_trees": ["trees", "messages", "sft_threads", "rm_groups", "rm_pairs", "rl_prompts", "skipped"],
    "02_sft": ["eval_loss_before", "eval_loss_after", "train_loss_first", "train_loss_last", "quantization",
               "trainable_params", "total_params", "tokens_per_second", "peak_memory_mb", "adapter_dir", "base_model_dir",
               "data_skipped"],
    "03_reward": ["eval_accuracy", "length_baseline_accuracy", "hh_accuracy", "reward_length_corr", "pairs_train",
                  "pairs_eval", "model_dir", "data_skipped", "accuracy_by_length", "length_head", "length_heads"],
    "04_dpo": ["seconds", "peak_memory_mb", "train_seconds", "heldout_accuracy_before", "heldout_accuracy_after",
               "heldout_margin_before", "heldout_margin_after", "heldout_pairs", "train_pairs", "adapter_dir", "data_skipped"],
    "04_ppo": ["reward_mean_first", "reward_mean_last", "kl_last", "updates", "seconds_per_update", "peak_memory_mb",
               "adapter_dir", "data_skipped", "progress", "fixed_set", "baseline", "replies_per_prompt", "ended_fraction_last"],
    "04_rloo": ["updates", "seconds", "seconds_per_update", "peak_memory_mb", "adapter_dir", "snapshots", "prompts",
                "prompts_too_long", "data_skipped", "train_log", "beta", "replies_per_prompt", "reward_mean_first",
                "reward_mean_last", "kl_last"],
    "05_evaluate": ["models", "judges", "reward_vs_kl", "rl_check", "fixed_set", "table", "data_read", "length_controlled",
                    "length_controlled_base", "lm_eval"],
}


@pytest.mark.parametrize("stage", sorted(REQUIRED))
def test_stage_metrics(micro_run, stage):
    metrics = read_metrics(micro_run, stage)
    missing = [k for k in REQUIRED[stage] if k not in metrics]
    assert not missing, f"{stage} metrics.json lacks {missing}"
    assert (micro_run / stage / f"{stage}.ipynb").exists()


def test_recorded_paths_resolve_after_the_stage_folder_was_renamed(micro_run):
    for stage, key in [("02_sft", "adapter_dir"), ("02_sft", "base_model_dir"), ("03_reward", "model_dir"), ("04_ppo", "adapter_dir"),
                       ("04_dpo", "adapter_dir")]:
        path = stage_path(micro_run, stage, key)
        assert path.is_dir() and any(path.iterdir()), f"{stage}.{key} -> {path}"


def test_stage_figures_are_sane(micro_run):
    sft = read_metrics(micro_run, "02_sft")
    assert sft["quantization"] == "nf4"
    assert 0 < sft["trainable_params"] < sft["total_params"]
    assert all(math.isfinite(sft[k]) for k in ("eval_loss_before", "eval_loss_after", "train_loss_first", "train_loss_last"))
    reward = read_metrics(micro_run, "03_reward")
    assert 0.0 <= reward["eval_accuracy"] <= 1.0 and reward["pairs_train"] > 0 and reward["pairs_eval"] > 0
    # The proxy has ODIN's two heads (micro's length_head); the judge stays plain. Each model's accuracy is split by
    # whether the preferred reply is the longer one, and the parts add up to the held-out pairs.
    assert reward["length_head"] is True and set(reward["length_heads"]) == {"proxy"}
    assert reward["length_heads"]["proxy"]["replies"] > 0 and 0 <= reward["length_heads"]["proxy"]["total_accuracy"] <= 1
    for model, sets in reward["accuracy_by_length"].items():
        assert sum(part["n"] for part in sets["OASST held-out"].values()) == reward["pairs_eval"], model
    ppo = read_metrics(micro_run, "04_ppo")
    assert ppo["updates"] >= 1 and ppo["seconds_per_update"] > 0
    evaluation = read_metrics(micro_run, "05_evaluate")
    # Players are "<model> (<sampling preset>)"; OpenAssistant's own models join from the sampling reports.
    models = {name.split(" (")[0] for name in evaluation["models"]}
    assert {"base", "sft", "ppo", "dpo", "rloo", "best_of_1", "best_of_2", "pythia-1b-deduped-sft", "pythia-12b-deduped-sft"} <= models
    for judge in evaluation["judges"].values():
        assert set(judge["elo"]) == set(evaluation["models"])
        # best-of-1 is SFT's own sampling, answer for answer: every game between the two is a draw
        assert judge["win_rates"]["best_of_1 (k50)"]["sft (k50)"] == 0.5
        assert judge["win_rate_intervals"]["best_of_1 (k50)"]["sft (k50)"]["ci"] == [0.5, 0.5]
    assert evaluation["best_of_n"] == {"best_of_1 (k50)": 1, "best_of_2 (k50)": 2}
    rows = {row["player"]: row for row in evaluation["table"]}
    assert rows["best_of_2 (k50)"]["training"].startswith("none: 2× sampling") and rows["dpo (k50)"]["KL to SFT"] != "–"
    assert rows["dpo (k50)"]["perplexity"] != "–" and rows["dpo (k50)"]["peak memory (MiB)"] != "–"


def test_dpo_starts_at_its_reference_and_reward_training_mixed_hh(micro_run):
    dpo = read_metrics(micro_run, "04_dpo")
    # Before training the policy is the SFT model it is measured against: every implicit reward is 0.
    assert (dpo["heldout_accuracy_before"], dpo["heldout_margin_before"]) == (0.5, 0.0)
    assert dpo["heldout_loss_before"] == pytest.approx(math.log(2))
    assert dpo["heldout_margin_after"] != 0.0 and dpo["train_pairs"] == 32 and dpo["heldout_pairs"] == 16
    reward = read_metrics(micro_run, "03_reward")
    mix = reward["hh_mix"]
    assert reward["hh_weight"] == mix["weight"] == 1.0 and mix["pairs_train"] == {"proxy": 32, "judge": 32}
    assert reward["hh_pairs"] == 32 <= mix["eval_lines"] and mix["train_lines"] + mix["eval_lines"] == 1156


def test_run_report_leads_with_the_results_and_gathers_every_stage(micro_run):
    report = (micro_run / "report.md").read_text()
    for stage in REQUIRED:
        assert f"\n## {stage}\n" in report
    lines = report.splitlines()
    assert any(line.startswith("| player | Elo (") for line in lines[:40]), "the results table is not on the first screen"
    assert not [line for line in lines if '{"' in line]
    assert (micro_run / "report.html").exists()


def test_the_console_shows_each_stage_and_a_summary_without_library_chatter(micro_run):
    console = (micro_run.parent / "console.log").read_text()
    assert "IPKernelApp" not in console and "without encryption" not in console
    assert "kernels-community" not in console
    lines = console.splitlines()
    for stage in REQUIRED:
        assert any(line.endswith(f"{stage}: running {stage}.ipynb (not run) ...") for line in lines), stage
        assert any(f"{stage}: done in " in line for line in lines), stage
        assert any(line.split()[:2] == [stage, "ran"] for line in lines), f"{stage} is missing from the summary"
    assert lines[-1].startswith(f"report: {micro_run / 'report.md'}")


def test_each_stage_records_the_threads_it_used_and_the_commit(micro_run):
    from utils.pipeline import machine
    from utils.pipeline.stage_record import read_record

    for stage in REQUIRED:
        record = read_record(micro_run / stage)
        assert record.machine["threads"] == machine.thread_count() and record.machine["cores"] == machine.available_cores()
        assert record.machine["others_running"] is not None


# A warning a notebook may show in red, because the notebook's prose explains it: (stage, what it says, what explains it).
EXPLAINED_WARNINGS = [
    ("05_evaluate", "prompts were longer than", "longer than the model's context"),
]


def test_executed_notebooks_show_no_stderr_but_the_warnings_they_explain(micro_run):
    import nbformat

    for stage in REQUIRED:
        nb = nbformat.read(micro_run / stage / f"{stage}.ipynb", as_version=4)
        prose = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.output_type != "error", stage
                if out.output_type == "stream" and out.name == "stderr":
                    explained = [e for s, says, e in EXPLAINED_WARNINGS if s == stage and says in out.text and e in prose]
                    assert explained, f"{stage}: an unexplained stderr output: {out.text[:200]!r}"


def test_rloo_keeps_its_adapter_and_at_least_4_snapshots(micro_run):
    """Stage 05 draws reward against KL from the snapshots: update 0 (the SFT policy) to the last, each a peft folder."""
    rloo = read_metrics(micro_run, "04_rloo")
    assert stage_path(micro_run, "04_rloo", "adapter_dir").is_dir()
    updates = sorted(int(u) for u in rloo["snapshots"])
    assert len(updates) >= 4 and updates[0] == 0 and updates[-1] == rloo["updates"], updates
    for rel in rloo["snapshots"].values():
        assert (micro_run / "04_rloo" / rel / "adapter_config.json").is_file(), rel
        assert not (micro_run / "04_rloo" / rel / "ref").exists()  # the policy alone, not trl's reference copy
    log = rloo["train_log"]
    assert len(log) == rloo["updates"] and log[0]["kl"] == 0.0  # the first replies come from π = π_ref
    assert all(math.isfinite(row["reward_mean"]) for row in log) and "reward_model_dir" in rloo


def test_the_evaluation_notebook_states_what_its_run_measured(micro_run):
    """Its readings are generated from the run's numbers: they match metrics.json, whatever the profile."""
    import re

    import nbformat

    from utils.evaluate.results import perplexity_reading

    nb = nbformat.read(micro_run / "05_evaluate" / "05_evaluate.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream" and o.get("name") == "stdout")
    metrics = read_metrics(micro_run, "05_evaluate")
    ppl = {p.split(" (")[0]: m["ppl"] for p, m in metrics["models"].items() if m.get("ppl") is not None}
    assert perplexity_reading({"base": ppl["base"], "sft": ppl["sft"]}) in printed
    for model in set(ppl) - {"base", "sft"}:
        assert f"{model} {ppl[model] - ppl['sft']:+.2f}" in printed
    judges = re.findall(r"Under (\w+\*?), of (\d+) players: (\d+) better than SFT, (\d+) worse, (\d+) cannot be told apart", printed)
    assert [j for j, *_ in judges] == ["proxy*", "judge"]
    for _, n, better, worse, tied in judges:
        assert int(better) + int(worse) + int(tied) == int(n) > 0
