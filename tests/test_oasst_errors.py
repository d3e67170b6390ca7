"""Bad input: one line ``FILE:LINE: problem`` and exit status 2 by default; counted under --on-error skip."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils.oasst import DataError, load_split, read_hh_pairs, read_prompts, read_trees
from utils.oasst.cli import main

REPO = Path(__file__).resolve().parent.parent


def message(mid, parent=None, role="prompter", **extra):
    m = {"message_id": mid, "parent_id": parent, "text": f"text of {mid}", "role": role, "lang": "en",
         "review_result": True, "deleted": False, "rank": None, "synthetic": False,
         "tree_state": "ready_for_export", "message_tree_id": "r"}  # fmt: skip
    m.update(extra)
    return m


GOOD = [message("r"), message("a", "r", "assistant", rank=0), message("b", "r", "assistant", rank=1), message("c", "a")]


def write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return path


def with_line(i: int, replacement) -> list:
    lines = [copy.deepcopy(m) for m in GOOD]
    lines[i] = replacement
    return lines


BAD_CASES = {
    # name: (lines, line number of the problem, words the message must contain, skip reason)
    "bad json": (with_line(2, b'{"message_id": "b", "text": '), 3, ["invalid JSON"], "bad_json"),
    "invalid utf-8": (with_line(1, b'{"message_id": "a", "text": "caf\xe9"}'), 2, ["invalid UTF-8"], "bad_utf8"),
    "missing field": (with_line(3, {k: v for k, v in message("c", "a").items() if k != "text"}), 4, ["missing field 'text'"], "missing_field"),
    "wrong type": (with_line(2, message("b", "r", "assistant", rank="1")), 3, ["'rank'", "int", "str"], "wrong_type"),
    "wrong role": (with_line(3, message("c", "a", role="user")), 4, ["role", "'user'"], "bad_value"),
    "not an object": (with_line(3, [1, 2]), 4, ["expected a JSON object", "list"], "wrong_type"),
    "duplicate id": (GOOD + [message("a", "r", "assistant", rank=2)], 5, ["duplicate message id a", ":2"], "duplicate_id"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_stops_with_one_line(tmp_path, capsys, case):
    lines, line_no, words, _ = BAD_CASES[case]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{path}:{line_no}: ")
    assert all(w in err for w in words), err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_is_skipped_and_counted(tmp_path, case):
    lines, _, _, reason = BAD_CASES[case]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    trees, report = read_trees([path], on_error="skip")
    n_lines = len(lines)
    assert report.read == n_lines and report.read == report.kept + sum(report.skipped.values())
    assert report.skipped[reason] == 1
    assert len(trees) == 1


def test_skipping_a_parent_skips_its_subtree_as_parent_skipped(tmp_path):
    # "a" is malformed; its reply "c" cannot be placed and is counted, not lost
    path = write_lines(tmp_path / "bad.jsonl", with_line(1, message("a", "r", "assistant", rank="x")))
    trees, report = read_trees([path], on_error="skip")
    assert report.skipped == {"wrong_type": 1, "parent_skipped": 1}
    assert trees[0].size == 2


def test_parent_cycle(tmp_path, capsys):
    # w (line 5) hangs under the cycle x -> z -> y -> x (lines 6-8): the error names a line on the cycle
    lines = GOOD + [message("w", "x"), message("x", "z", "assistant"), message("y", "x"), message("z", "y", "assistant")]
    path = write_lines(tmp_path / "cycle.jsonl", lines)
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:6: parent cycle: x -> z -> y -> x") and err.count("\n") == 1
    trees, report = read_trees([path], on_error="skip")
    assert report.skipped == {"parent_cycle": 4} and report.kept == 4  # x, y, z on the cycle, w under it


def test_self_parent_is_a_cycle(tmp_path):
    path = write_lines(tmp_path / "self.jsonl", GOOD + [message("s", "s")])
    with pytest.raises(DataError, match=r":5: parent cycle: s -> s"):
        read_trees([path])


def test_orphans_are_never_an_error(tmp_path):
    path = write_lines(tmp_path / "orphans.jsonl", GOOD + [message("o", "missing", "assistant"), message("p", "o")])
    trees, report = read_trees([path])  # default policy: raise, yet no error
    assert report.skipped == {"orphaned": 2} and report.kept == 4 and len(trees) == 1


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_input_says_so(tmp_path, capsys, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    for policy in ("raise", "skip"):
        assert main(["stats", str(path), "--on-error", policy]) == 2
        assert capsys.readouterr().err == f"{path}: empty input: no records\n"


def test_missing_file(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.jsonl")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope.jsonl'}: no such file\n"


def test_nested_tree_with_a_bad_node_is_skipped_whole(tmp_path, capsys):
    tree = {"message_tree_id": "t", "tree_state": "ready_for_export", "prompt": {**message("t"), "replies": [
        {**message("u", "t", "assistant"), "replies": []},
        {**message("v", "t", "assistant", deleted="no"), "replies": []},
    ]}}  # fmt: skip
    path = write_lines(tmp_path / "nested.jsonl", [tree])
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:1: tree t: ") and "'deleted'" in err
    _, report = read_trees([path], on_error="skip")
    assert report.read == 3 and report.skipped == {"wrong_type": 3}


def test_duplicate_across_files_names_both(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", GOOD)
    b = write_lines(tmp_path / "b.jsonl", [message("q"), message("c", "q")])
    with pytest.raises(DataError) as e:
        read_trees([a, b])
    assert str(e.value) == f"{b}:2: duplicate message id c (first read at {a}:4)"


def test_damaged_gzip(tmp_path, capsys):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(json.dumps(m).encode() + b"\n" for m in GOOD))[:-12])
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: unreadable file") and err.count("\n") == 1


def test_cli_exit_status_and_no_traceback_in_a_real_process(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", BAD_CASES["bad json"][0])
    run = subprocess.run([sys.executable, "-m", "utils.oasst", "stats", str(path)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith(f"{path}:3: invalid JSON") and run.stderr.count("\n") == 1
    run = subprocess.run([sys.executable, "-m", "utils.oasst", "stats", str(path), "--on-error", "skip", "--json"], cwd=REPO, capture_output=True, text=True)
    out = json.loads(run.stdout)
    assert run.returncode == 0 and out["skipped"] == {"bad_json": 1} and out["read"] == 4 and out["messages"] == 3


def test_hh_and_prompt_readers_report_bad_lines(tmp_path):
    hh = write_lines(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"}, {"chosen": "x"}])
    with pytest.raises(DataError, match=r"hh.jsonl:2: missing field 'rejected'"):
        read_hh_pairs(hh)
    assert len(read_hh_pairs(hh, on_error="skip")) == 1
    mismatch = write_lines(tmp_path / "mm.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}])
    with pytest.raises(DataError, match=r"mm.jsonl:1: 'chosen' and 'rejected' differ"):
        read_hh_pairs(mismatch)
    prompts = write_lines(tmp_path / "p.jsonl", ["a", {"prompt": "b"}, 3])
    with pytest.raises(DataError, match=r"p.jsonl:3: expected a JSON string"):
        read_prompts(prompts)
    assert read_prompts(prompts, on_error="skip") == ["a", "b"]


def test_load_split_checks_its_arguments(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", GOOD)
    with pytest.raises(TypeError):
        load_split(str(path))
    with pytest.raises(ValueError, match="eval_fraction"):
        load_split([path], eval_fraction=1.0)
