"""Every input form reads to the same trees; the form is told from the content; no field is lost."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

import oasst_reference as ref
from utils.oasst import iter_messages, load_trees, read_trees, rl_prompts, rm_groups, sft_conversations

DATA = Path(__file__).resolve().parent.parent / "data"
FLAT = DATA / "oasst1_en_validation_messages.jsonl"
NESTED = DATA / "oasst_en_100_trees.jsonl"


@pytest.fixture(scope="module")
def flat_raw():
    return ref.read_json_lines(FLAT)


def shape(trees):
    """Everything a reader decides: tree ids, states, and each tree's (id, parent, text) in walk order."""
    return sorted(
        (t.id, t.state, t.size, tuple((m["message_id"], m.get("parent_id"), m["text"]) for m in iter_messages(t)))
        for t in trees
    )


def gzip_copy(src: Path, dst: Path) -> Path:
    with src.open("rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    return dst


def test_jsonl_gz_reads_like_jsonl(tmp_path):
    for src in (FLAT, NESTED):
        plain, plain_report = read_trees([src])
        gz, gz_report = read_trees([gzip_copy(src, tmp_path / (src.name + ".gz"))])
        assert shape(gz) == shape(plain)
        assert (gz_report.read, gz_report.kept, gz_report.skipped) == (plain_report.read, plain_report.kept, plain_report.skipped)


def test_parquet_reads_like_jsonl(tmp_path, flat_raw):
    path = tmp_path / "messages.parquet"
    pq.write_table(pa.Table.from_pylist(flat_raw), path)
    trees, report = read_trees([path])
    assert shape(trees) == shape(read_trees([FLAT])[0])
    assert report.read == len(flat_raw)
    assert sft_conversations(load_trees([path])[0]) == sft_conversations(load_trees([FLAT])[0])


def test_in_memory_dataset_reads_like_jsonl(flat_raw):
    ds = Dataset.from_list(flat_raw)
    trees, report = read_trees([ds])
    assert shape(trees) == shape(read_trees([FLAT])[0])
    assert report.read == 2022 and report.skipped == {"orphaned": 3}
    assert [(g.prompt, g.replies) for g in rm_groups(load_trees([ds])[0])] == [
        (g.prompt, g.replies) for g in rm_groups(load_trees([FLAT])[0])
    ]


def test_form_is_told_from_content_not_name(tmp_path):
    # a gzip file named .jsonl, a nested export named .parquet, a flat file with no suffix
    gz_named_jsonl = gzip_copy(FLAT, tmp_path / "flat.jsonl")
    nested_named_parquet = tmp_path / "trees.parquet"
    shutil.copy(NESTED, nested_named_parquet)
    no_suffix = tmp_path / "messages"
    shutil.copy(FLAT, no_suffix)
    assert shape(read_trees([gz_named_jsonl])[0]) == shape(read_trees([FLAT])[0])
    assert shape(read_trees([nested_named_parquet])[0]) == shape(read_trees([NESTED])[0])
    assert shape(read_trees([no_suffix])[0]) == shape(read_trees([FLAT])[0])


def test_every_field_is_kept(flat_raw):
    trees, _ = read_trees([FLAT])
    by_id = {m["message_id"]: m for m in flat_raw}
    seen = 0
    for tree in trees:
        for m in iter_messages(tree):
            assert {k: v for k, v in m.items() if k != "replies"} == by_id[m["message_id"]]
            seen += 1
    assert seen == 2022 - 3
    nested_raw = ref.read_json_lines(NESTED)
    raw_root = {t["message_tree_id"]: t["prompt"] for t in nested_raw}
    for tree in read_trees([NESTED])[0]:
        assert tree.prompt == raw_root[tree.id]  # replies and all, labels / emojis / model_name included


def test_children_keep_input_order(flat_raw):
    trees, _ = read_trees([FLAT])
    position = {m["message_id"]: i for i, m in enumerate(flat_raw)}
    for tree in trees:
        for m in iter_messages(tree):
            order = [position[r["message_id"]] for r in m["replies"]]
            assert order == sorted(order)
    reversed_trees, _ = read_trees([Dataset.from_list(flat_raw[::-1])])
    for tree in reversed_trees:
        for m in iter_messages(tree):
            order = [position[r["message_id"]] for r in m["replies"]]
            assert order == sorted(order, reverse=True)


def test_flat_and_nested_forms_mix_in_one_read(tmp_path, flat_raw):
    nested_ids = {t["message_tree_id"] for t in ref.read_json_lines(NESTED)}
    only_flat = [m for m in flat_raw if m["message_tree_id"] not in nested_ids]
    mixed = tmp_path / "mixed.jsonl"
    nested_lines = NESTED.read_text().splitlines()
    mixed.write_text("\n".join([json.dumps(m) for m in only_flat[:500]] + nested_lines + [json.dumps(m) for m in only_flat[500:]]) + "\n")
    trees, report = read_trees([mixed])
    separate = read_trees([Dataset.from_list(only_flat)])[0] + read_trees([NESTED])[0]
    assert shape(trees) == shape(separate)
    assert report.read == len(only_flat) + 1167


def test_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "gaps.jsonl"
    lines = FLAT.read_text().splitlines()
    path.write_text("\n" + "\n\n".join(lines) + "\n  \n")
    trees, report = read_trees([path])
    assert shape(trees) == shape(read_trees([FLAT])[0]) and report.read == 2022


def test_lang_selection(tmp_path, flat_raw):
    # relabel a few whole trees as German: they leave the English view and form the German one
    german = sorted({m["message_tree_id"] for m in flat_raw if m["parent_id"] is None})[:5]
    relabelled = [dict(m, lang="de") if m["message_tree_id"] in german else m for m in flat_raw]
    en, en_report = load_trees([Dataset.from_list(relabelled)], lang=["en"])
    de, _ = load_trees([Dataset.from_list(relabelled)], lang="de")
    both, _ = load_trees([Dataset.from_list(relabelled)], lang="en,de")
    everything, _ = load_trees([Dataset.from_list(relabelled)], lang=None)
    assert sorted(t.id for t in de) == german
    assert len(en) == 188 - 5 and len(both) == len(everything) == 188
    assert en_report.skipped["lang_not_selected"] == sum(m["message_tree_id"] in german for m in flat_raw)


def test_trees_that_are_not_ready_or_not_accepted_are_left_out(flat_raw):
    roots = sorted(m["message_id"] for m in flat_raw if m["parent_id"] is None)
    growing, rejected = roots[0], roots[1]
    edited = []
    for m in flat_raw:
        m = dict(m)
        if m["message_id"] == growing:
            m["tree_state"] = "growing"
        if m["message_id"] == rejected:
            m["review_result"] = False
        edited.append(m)
    trees, report = load_trees([Dataset.from_list(edited)])
    assert {t.id for t in trees} == set(roots) - {growing, rejected}
    size = {r: sum(m["message_tree_id"] == r for m in flat_raw) for r in (growing, rejected)}
    assert report.skipped["tree_not_ready_for_export"] == size[growing]
    assert report.skipped["prompt_not_accepted_in_review"] == size[rejected]
    assert report.read == report.kept + sum(report.skipped.values())


def test_views_on_a_hand_made_tree(tmp_path):
    path = tmp_path / "hand.jsonl"
    path.write_text(json.dumps(ref.hand_tree()) + "\n")
    trees, _ = load_trees([path])
    assert ref.contents(sft_conversations(trees)) == [["hi", "A"], ["hi", "B", "go on", "C"]]
    assert ref.contents(sft_conversations(trees, top_k=1)) == [["hi", "A"]]
    assert [g.replies for g in rm_groups(trees)] == [["A", "B", "D"]]
    assert ref.contents(rl_prompts(trees)) == [["hi"], ["hi", "A", "more?"], ["hi", "B", "go on"]]


def test_hub_source_offline_is_one_line_naming_it(monkeypatch):
    """`hf:NAME` asks datasets.load_dataset; offline (as in every test) that fails as one DataError line."""
    from utils.oasst import DataError, load_trees

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_trees(["hf:OpenAssistant/no-such-dataset-offline"])
    msg = str(e.value)
    assert msg.startswith("hf:OpenAssistant/no-such-dataset-offline: cannot load from the Hugging Face Hub") and "\n" not in msg
    assert e.value.reason == "hub_unavailable"


def test_hub_source_reads_what_load_dataset_returns(monkeypatch):
    """Every split of a DatasetDict is read (the kit splits by tree itself); a named split alone otherwise."""
    import datasets

    from utils.oasst import load_trees

    rows = [json.loads(line) for line in Path(FLAT).read_text().splitlines()]
    by_split = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1000]), "validation": datasets.Dataset.from_list(rows[1000:])})
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return by_split[split] if split else by_split

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _, whole = load_trees(["hf:OpenAssistant/oasst1"], lang=None)
    _, part = load_trees(["hf:OpenAssistant/oasst1:train"], lang=None)
    assert calls == [("OpenAssistant/oasst1", None), ("OpenAssistant/oasst1", "train")]
    assert whole.read == len(rows) and part.read == 1000
