"""OpenAssistant sampling reports read into tournament players (on the real files in data/)."""

import json
import shutil

import pytest

from utils.evaluate.sampling_reports import load_players, prompt_key, read_sampling_report

REPORTS = "data/oa_sampling_reports"
ONE_B = f"{REPORTS}/2023-03-01_pythia-1b-deduped-sft_sampling.json"
TWELVE_B = f"{REPORTS}/2023-03-01_pythia-12b-deduped-sft_sampling.json"


def heldout_roots() -> set[str]:
    # The 100-tree file, read directly: every line is one tree whose root prompt is tree["prompt"]["text"].
    with open("data/oasst_en_100_trees.jsonl") as f:
        return {prompt_key(json.loads(line)["prompt"]["text"]) for line in f}


def test_real_report_reads_with_its_configs_and_counts():
    # data/README.md: 100 root prompts; configs k50, beam5, magic_numbers, greedy; 2 samples (greedy: 1).
    report = read_sampling_report(ONE_B)
    assert report.model_name == "theblackcat102/pythia-1b-deduped-sft"
    assert report.short_name == "pythia-1b-deduped-sft"
    assert len(report.prompts) == 100
    assert report.configs() == ["k50", "beam5", "magic_numbers", "greedy"]
    k50 = report.answers("k50")
    assert len(k50) == 100 and all(len(v) == 2 for v in k50.values())
    assert sum(len(v) for v in report.answers("greedy").values()) == 100
    params = report.sampling_params("k50")
    assert (params["top_k"], params["top_p"], params["temperature"], params["repetition_penalty"]) == (50, 0.95, 1.0, 1.2)


def test_players_from_two_reports_answer_the_heldout_root_prompts():
    players = load_players([ONE_B, TWELVE_B], configs=["k50", "greedy"])
    assert sorted(players) == [
        "pythia-12b-deduped-sft (greedy)",
        "pythia-12b-deduped-sft (k50)",
        "pythia-1b-deduped-sft (greedy)",
        "pythia-1b-deduped-sft (k50)",
    ]
    roots = heldout_roots()
    for answers in players.values():
        assert set(answers) == roots  # matched by text: every report prompt is a root of the 100-tree file
    assert sum(len(v) for v in players["pythia-12b-deduped-sft (k50)"].values()) == 200
    one_each = load_players([TWELVE_B], samples=1)
    assert all(len(v) == 1 for v in one_each["pythia-12b-deduped-sft (k50)"].values())


def test_prompt_key_ignores_whitespace_differences():
    assert prompt_key("  Hello\n  world ") == prompt_key("Hello world")
    assert prompt_key("Hello world") != prompt_key("Hello, world")


def test_same_model_twice_is_told_apart_by_date(tmp_path):
    raw = json.loads(open(ONE_B).read())
    raw["date"] = "2023-04-01T00:00:00"
    later = tmp_path / "later.json"
    later.write_text(json.dumps(raw))
    players = load_players([ONE_B, later])
    assert sorted(players) == ["pythia-1b-deduped-sft (k50)", "pythia-1b-deduped-sft 2023-04-01 (k50)"]
    copy = tmp_path / "copy.json"
    shutil.copy(ONE_B, copy)
    with pytest.raises(ValueError, match="same model, date and config"):
        load_players([ONE_B, copy])


def test_bad_reports_name_the_file_and_the_place(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_name": "m",\n "prompts": [}')
    with pytest.raises(ValueError, match=r"bad.json:2: invalid JSON"):
        read_sampling_report(bad)
    bad.write_text(json.dumps({"model_name": "m", "prompts": [{"prompt": "p", "results": [{"sampling_config": "k50"}]}]}))
    with pytest.raises(ValueError, match=r"bad.json: prompts\[0\]\.results\[0\]: missing 'outputs'"):
        read_sampling_report(bad)
    bad.write_text(json.dumps({"model_name": "m", "prompts": [{"prompt": 3, "results": []}]}))
    with pytest.raises(ValueError, match=r"prompts\[0\]\.prompt: expected str, got int"):
        read_sampling_report(bad)
    with pytest.raises(KeyError, match="no sampling config 'top5'.*k50"):
        load_players([ONE_B], configs=["top5"])
