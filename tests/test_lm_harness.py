"""Stage 05's lm-evaluation-harness step: the kit's HH-pairs task, run offline through lm-eval on tiny random models."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch
import yaml
from tokenizers import pre_tokenizers

from fixtures import chat_word_tokenizer, tiny_gpt_neox

from utils.evaluate.lm_harness import (HH_TASK, evaluate_players, harness_rows, lead_metric, local_tasks, run_tasks, with_diffs,
                              write_hh_pairs_task)

HH_FILE = "data/hh_rlhf_harmless_base_test_part1.jsonl.gz"
CONTEXT = 256


@pytest.fixture(scope="module")
def hh_pairs():
    """The first real pairs of the shipped file's evaluation part, as stage 05 reads them."""
    from utils.oasst import read_hh_pairs
    from utils.reward.stage import split_hh

    _, evaluation = split_hh(read_hh_pairs(HH_FILE), 0.5, 0)
    return evaluation[:40]


@pytest.fixture(scope="module")
def tokenizer(hh_pairs):
    """One id per word of the pairs (and the kit's chat tokens): every word of the task has its own token."""
    split = pre_tokenizers.Whitespace()
    texts = [t["content"] for p in hh_pairs for t in p.prompt] + [r for p in hh_pairs for r in (p.chosen, p.rejected)]
    words = sorted({w for text in texts for w, _ in split.pre_tokenize_str(text)} | {"extra", "words"})
    return chat_word_tokenizer(words)


def model(tokenizer, seed: int = 0, sharpen: float = 1.0):
    lm = tiny_gpt_neox(len(tokenizer), seed, max_position_embeddings=CONTEXT, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id).eval()
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(sharpen)  # a random model's next-token distribution is near uniform
    return lm


def test_the_task_is_written_as_lm_eval_reads_it(hh_pairs, tokenizer, tmp_path):
    info = write_hh_pairs_task(hh_pairs, tmp_path / "tasks", tokenizer, max_tokens=CONTEXT)
    config = yaml.safe_load((tmp_path / "tasks" / f"{HH_TASK}.yaml").read_text())
    assert config["task"] == HH_TASK and config["output_type"] == "multiple_choice" and config["dataset_path"] == "json"
    assert config["dataset_kwargs"]["data_files"]["test"] == info["data"] == str((tmp_path / "tasks" / f"{HH_TASK}.jsonl").resolve())
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
    assert "NOT a standard benchmark" in config["metadata"]["note"] and "description" not in config  # lm-eval prepends a description
    docs = [json.loads(line) for line in open(info["data"])]
    assert info["pairs"] == len(docs) and info["pairs"] + info["too_long"] == len(hh_pairs) and info["too_long"] > 0
    assert {d["gold"] for d in docs} == {0, 1}  # the preferred reply is not always first: a tie favours neither
    kept = [p for p in hh_pairs if any(p.chosen in d["choices"] for d in docs)]
    for doc, pair in zip(docs, kept):
        assert doc["choices"][doc["gold"]] == pair.chosen and doc["choices"][1 - doc["gold"]] == pair.rejected
        assert doc["context"].endswith("<|assistant|>") and pair.prompt[-1]["content"] in doc["context"]
        assert max(len(tokenizer(doc["context"] + c)["input_ids"]) for c in doc["choices"]) <= CONTEXT
    with pytest.raises(ValueError, match="starts with 'kit_'"):
        write_hh_pairs_task(hh_pairs, tmp_path / "other", tokenizer, name="hh_pairs")
    with pytest.raises(ValueError, match="no pair fits"):
        write_hh_pairs_task(hh_pairs, tmp_path / "other", tokenizer, max_tokens=3)


def test_local_tasks_are_the_kit_ones():
    assert local_tasks(["hellaswag", HH_TASK, "piqa"]) == [HH_TASK]
    assert local_tasks(["hellaswag"]) == []
    with pytest.raises(ValueError, match="unknown kit task"):
        local_tasks(["kit_nonsense"])


def test_lm_eval_runs_the_task_offline(hh_pairs, tokenizer, tmp_path):
    write_hh_pairs_task(hh_pairs, tmp_path, tokenizer, max_tokens=CONTEXT)
    lm = model(tokenizer)
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = run_tasks(lm, tokenizer, [HH_TASK], limit=12, batch_size=4, include_path=tmp_path)[HH_TASK]
    # simple_evaluate seeds every generator; the caller's state comes back as it was
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    assert first["n"] == 12
    for metric in ("acc", "acc_norm"):
        assert 0 <= first[metric]["value"] <= 1 and first[metric]["stderr"] > 0
        # lm-eval's standard error of a mean of 0/1 scores: the sample standard deviation over sqrt(n)
        p, n = first[metric]["value"], first["n"]
        assert first[metric]["stderr"] == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1) / n))
    again = run_tasks(lm, tokenizer, [HH_TASK], limit=12, batch_size=3, include_path=tmp_path)[HH_TASK]
    assert again == first  # log-likelihoods, no sampling: the same scores whatever the batch size


def test_the_preferred_reply_is_the_one_scored_as_gold(hh_pairs, tokenizer, tmp_path):
    """A reply that is another one with words appended has a lower summed log-likelihood under any model: lm-eval's
    ``acc`` must then be 1 when the preferred reply is the shorter one, and 0 when it is the longer one."""
    short = [dataclasses.replace(p, rejected=p.chosen + " extra words") for p in hh_pairs]
    long = [dataclasses.replace(p, chosen=p.rejected + " extra words") for p in hh_pairs]
    lm = model(tokenizer, seed=3)
    for pairs, expected in ((short, 1.0), (long, 0.0)):
        folder = tmp_path / str(expected)
        write_hh_pairs_task(pairs, folder, tokenizer, max_tokens=CONTEXT, seed=1)
        result = run_tasks(lm, tokenizer, [HH_TASK], limit=10, batch_size=8, include_path=folder)[HH_TASK]
        assert result["n"] == 10 and result["acc"]["value"] == expected and result["acc"]["stderr"] == 0


def test_players_switch_adapters_on_the_shared_model(hh_pairs, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    from utils.evaluate.models import Models

    write_hh_pairs_task(hh_pairs, tmp_path, tokenizer, max_tokens=CONTEXT)
    peft = get_peft_model(model(tokenizer, seed=5, sharpen=20), LoraConfig(r=4, target_modules=["query_key_value"]), adapter_name="sft")
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # LoRA's B starts at zero; a trained adapter's is not
    peft.eval()
    models = Models(peft, tokenizer, ["base", "sft"], {})
    results = evaluate_players(models, models.names, [HH_TASK], limit=16, batch_size=8, include_path=tmp_path)
    plain = run_tasks(model(tokenizer, seed=5, sharpen=20), tokenizer, [HH_TASK], limit=16, batch_size=8, include_path=tmp_path)
    assert results["base"] == plain  # "base": the adapter off, exactly the weights it was put on
    assert results["sft"] != results["base"]  # "sft": the adapter on
    diffs = with_diffs(results)
    for metric in ("acc", "acc_norm"):
        assert diffs["base"][HH_TASK][metric]["diff_to_base"] == diffs["base"][HH_TASK][metric]["diff_stderr"] == 0.0
        sft, base = results["sft"][HH_TASK][metric], results["base"][HH_TASK][metric]
        assert diffs["sft"][HH_TASK][metric]["diff_to_base"] == pytest.approx(sft["value"] - base["value"])
    assert [r["model"] for r in harness_rows(results)] == ["base", "sft"]


def test_rows_lead_with_acc_norm_and_show_the_tax_with_a_conservative_error():
    results = {
        "base": {"arc_easy": {"n": 100, "acc": {"value": 0.60, "stderr": 0.04}, "acc_norm": {"value": 0.55, "stderr": 0.03}},
                 "boolq": {"n": 50, "acc": {"value": 0.70, "stderr": 0.05}}},
        "sft": {"arc_easy": {"n": 100, "acc": {"value": 0.58, "stderr": 0.04}, "acc_norm": {"value": 0.51, "stderr": 0.04}},
                "boolq": {"n": 50, "acc": {"value": 0.74, "stderr": 0.05}}},
    }
    diffs = with_diffs(results)
    assert diffs["sft"]["arc_easy"]["acc_norm"]["diff_to_base"] == pytest.approx(-0.04)
    assert diffs["sft"]["arc_easy"]["acc_norm"]["diff_stderr"] == pytest.approx(0.05)  # sqrt(0.03² + 0.04²)
    assert diffs["base"]["boolq"]["acc"] == {"value": 0.70, "stderr": 0.05, "diff_to_base": 0.0, "diff_stderr": 0.0}
    assert diffs["sft"]["boolq"]["lead"] == "acc" and diffs["sft"]["arc_easy"]["lead"] == "acc_norm"
    assert with_diffs({"sft": results["sft"]})["sft"]["boolq"]["acc"]["diff_to_base"] is None  # no base: no difference
    assert with_diffs({}) == {}
    rows = harness_rows(results)
    assert rows == [
        {"task": "arc_easy", "metric": "acc_norm", "model": "base", "score": "0.550 ± 0.030", "vs base": "", "n": 100},
        {"task": "arc_easy", "metric": "acc_norm", "model": "sft", "score": "0.510 ± 0.040", "vs base": "-0.040 ± 0.050", "n": 100},
        {"task": "boolq", "metric": "acc", "model": "base", "score": "0.700 ± 0.050", "vs base": "", "n": 50},
        {"task": "boolq", "metric": "acc", "model": "sft", "score": "0.740 ± 0.050", "vs base": "+0.040 ± 0.071", "n": 50},
    ]
    assert lead_metric({"n": 1, "acc": {}}) == "acc"


def test_profiles_name_tasks_that_exist_and_offline_ones_need_no_hub():
    """A misspelt lm-eval task would fail only online, hours into a GPU run: every name must be in lm-eval's index."""
    from lm_eval.tasks import TaskManager

    from utils.pipeline.profile import PROFILES_DIR, REPO_ROOT, load_profile

    known = set(TaskManager().all_tasks)
    for path in sorted(PROFILES_DIR.glob("*.yaml")) + [REPO_ROOT / "tests" / "profiles" / "micro.yaml"]:
        profile = load_profile(path)
        tasks = profile.stage_params("05_evaluate")["lm_eval_tasks"]
        theirs = [t for t in tasks if t not in local_tasks(tasks)]
        assert set(theirs) <= known, f"{path.name}: lm-eval knows no {sorted(set(theirs) - known)}"
        if profile.offline:
            assert not theirs, f"{path.name} is offline but names lm-eval tasks that download from the hub: {theirs}"
