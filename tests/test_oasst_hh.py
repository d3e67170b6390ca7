"""HH-RLHF pair files as they are published: transcripts that part before the final reply are read the way
trl reads them, the rest are skipped and counted, and ``stats`` knows the form."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from utils.oasst import DataError, Report, is_hh_file, read_hh_pairs
from utils.oasst.cli import main

REPO = Path(__file__).resolve().parent.parent
QUIRKS = REPO / "tests" / "data" / "hh_rlhf_quirks.jsonl"  # shaped like the published records, quirks made by hand
HH = REPO / "data" / "hh_rlhf_harmless_base_test_part1.jsonl.gz"


def trl_extract_dialogue(example: dict) -> dict:
    """trl's reading of an HH-RLHF record (examples/datasets/hh-rlhf-helpful-base.py, ``extract_dialogue``),
    restated: the prompt is the two transcripts' common start, cut back to the last "\\n\\nAssistant: "; each
    answer is the rest of its transcript, as raw text."""
    chosen, rejected = example["chosen"], example["rejected"]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    prompt = chosen[:n]
    if not prompt.endswith("\n\nAssistant: "):
        prompt = prompt[: prompt.rfind("\n\nAssistant: ")] + "\n\nAssistant: "
    turns = re.split(r"(\n\nAssistant: |\n\nHuman: )", prompt[: -len("\n\nAssistant: ")])[1:]
    return {
        "prompt": [{"role": "user" if turns[i] == "\n\nHuman: " else "assistant", "content": turns[i + 1]} for i in range(0, len(turns), 2)],
        "chosen": chosen[len(prompt):],
        "rejected": rejected[len(prompt):],
    }


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_that_part_early_are_read_as_trl_reads_them():
    report = Report()
    pairs = read_hh_pairs(QUIRKS, on_error="skip", report=report)
    raw = records(QUIRKS)
    assert (report.read, report.kept, dict(report.skipped)) == (7, 5, {"no_shared_prompt": 1, "identical_replies": 1})
    assert report.notes == {"hh_parted_early": 3}
    readable = [r for i, r in enumerate(raw) if i not in (4, 6)]  # line 5 shares no turn: no prompt; line 7 is a tie
    for pair, rec in zip(pairs, readable):
        if not rec["chosen"].startswith("\n\n"):
            rec = {k: "\n\n" + v for k, v in rec.items()}  # trl's split needs the leading blank lines
        expected = trl_extract_dialogue(rec)
        assert pair.prompt == [{**t, "content": t["content"].strip()} for t in expected["prompt"]]
        assert (pair.chosen, pair.rejected) == (expected["chosen"].strip(), expected["rejected"].strip())


def test_the_quirks_one_by_one():
    report = Report()
    pairs = read_hh_pairs(QUIRKS, on_error="skip", report=report)
    ordinary, runs_on, shorter, parts_at_human, no_blank_lines = pairs
    assert ordinary.prompt == [{"role": "user", "content": "Is it possible to download a car?"}]
    # A reply with "Human:" turns of its own: the prompt is the three shared turns, the reply keeps its tail.
    assert len(runs_on.prompt) == 3 and runs_on.chosen.endswith("\n\nHuman: Can you send it for me?\n\nAssistant: I can't send email, but I can help you write one.")
    assert "\n\nHuman:" not in runs_on.rejected
    # Transcripts of different lengths, and transcripts that part at a Human turn: the answers start at the
    # last assistant turn both still share.
    for pair in (shorter, parts_at_human):
        assert len(pair.prompt) == 1 and pair.prompt[0]["role"] == "user"
        assert pair.chosen.split("\n\nHuman:")[0] == pair.rejected.split("\n\nHuman:")[0]
    assert no_blank_lines.prompt[0]["content"].startswith("Can you provide me the home address")
    # Two identical replies state no preference: no pair (a tie, as in OASST's rankings), counted, never an error.
    assert report.skipped == {"no_shared_prompt": 1, "identical_replies": 1} and report.balanced()


def test_a_pair_without_a_shared_prompt_stops_a_strict_read_in_one_line():
    with pytest.raises(DataError) as e:
        read_hh_pairs(QUIRKS)
    assert str(e.value) == f"{QUIRKS}:5: 'chosen' and 'rejected' differ before any shared 'Human:' turn: no prompt to share"


def test_the_shipped_file_has_no_quirks():
    report = Report()
    assert len(read_hh_pairs(HH, report=report)) == 1156 and not report.notes and not report.skipped


def test_hh_files_are_told_from_their_content(tmp_path):
    table = pa.Table.from_pylist(records(QUIRKS))
    pq.write_table(table, tmp_path / "hh.parquet")
    (tmp_path / "hh.data").write_text(QUIRKS.read_text())
    assert is_hh_file(HH) and is_hh_file(QUIRKS) and is_hh_file(tmp_path / "hh.parquet") and is_hh_file(tmp_path / "hh.data")
    assert not is_hh_file(REPO / "data" / "oasst_en_100_trees.jsonl") and not is_hh_file(tmp_path / "missing.jsonl")
    assert len(read_hh_pairs(tmp_path / "hh.parquet", on_error="skip")) == 5


def test_stats_counts_the_pairs_of_an_hh_file(capsys):
    assert main(["stats", str(HH), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hh_rlhf"] == {"pairs": 1156, "read": 1156, "skipped": {}, "notes": {}}
    assert "trees" not in out  # no OASST export given, no OASST counts
    assert main(["stats", str(QUIRKS), "--on-error", "skip"]) == 0
    text = capsys.readouterr().out
    assert "hh_pairs             5" in text and "read 7 = kept 5 + skipped 2 (pairs)" in text and "no_shared_prompt" in text


def test_stats_mixes_an_oasst_export_and_an_hh_file_each_in_its_own_unit(capsys):
    assert main(["stats", str(REPO / "data" / "oasst_en_100_trees.jsonl"), str(QUIRKS), "--on-error", "skip", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["trees"], out["messages"], out["read"]) == (100, 1167, 1167)
    assert out["hh_rlhf"] == {"pairs": 5, "read": 7, "skipped": {"identical_replies": 1, "no_shared_prompt": 1}, "notes": {"hh_parted_early": 3}}


def test_stats_on_an_hh_file_in_a_real_process():
    run = subprocess.run([sys.executable, "-m", "utils.oasst", "stats", str(QUIRKS), "--json"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"{QUIRKS}:5: 'chosen' and 'rejected' differ before any shared 'Human:' turn: no prompt to share\n"
    run = subprocess.run([sys.executable, "-m", "utils.oasst", "stats", str(QUIRKS), "--json", "--on-error", "skip"],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0 and json.loads(run.stdout)["hh_rlhf"]["pairs"] == 5
