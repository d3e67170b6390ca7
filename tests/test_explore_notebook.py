"""Notebook 01_explore_trees: its shape (setup, parameters = the tiny profile) and one papermill run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from utils.oasst import count_views, load_split
from utils.pipeline.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "01_explore_trees.ipynb"


def test_notebook_is_committed_clean_and_parameterized():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# 01")
    assert nb.cells[1].source.startswith("# Setup. On Colab")
    assert "parameters" in nb.cells[2].metadata.get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    defaults: dict = {}
    exec(nb.cells[2].source, {}, defaults)
    profile = load_profile("tiny").stage_params("01_explore_trees")
    assert {k: defaults[k] for k in profile} == profile
    assert set(defaults) == set(profile) | {"run_dir", "out_dir"}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    out_dir = tmp / "01_explore_trees"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp / "01_explore_trees.ipynb"),
        parameters={"out_dir": str(out_dir), "run_dir": str(tmp)}, cwd=str(REPO), progress_bar=False, kernel_name="python3",
    )  # fmt: skip
    return out_dir


def test_notebook_writes_its_counts_and_plots(executed):
    metrics = json.loads((executed / "metrics.json").read_text())
    # facts of data/README.md
    assert metrics["trees"] == 191 - 3 and metrics["messages"] == 2022 and metrics["skipped"] == {"orphaned": 3}
    assert metrics["flags"]["deleted"] == 40
    assert metrics["splits"]["heldout"]["trees"] == 100 and metrics["splits"]["heldout"]["messages"] == 1167
    assert metrics["splits"]["train"]["trees"] + metrics["splits"]["eval"]["trees"] == 188 - 6
    split = load_split([REPO / "data/oasst1_en_validation_messages.jsonl"], [REPO / "data/oasst_en_100_trees.jsonl"])
    counts = count_views(split.train)
    assert (metrics["sft_threads"], metrics["rm_pairs"]) == (counts.sft_threads, counts.rm_pairs)
    assert 0.5 < metrics["longer_chosen_rate"] < 1  # the sample's ranked-better replies are longer
    nested = [json.loads(line) for line in (REPO / "data/oasst_en_100_trees.jsonl").read_text().splitlines()]

    def nodes(node):
        yield node
        for reply in node["replies"]:
            yield from nodes(reply)

    heldout = [m for t in nested for m in nodes(t["prompt"])]
    share = sum(m["synthetic"] for m in heldout) / len(heldout)
    assert metrics["synthetic_share"] == {"train files": 0.0, "held-out files": round(share, 4)}
    for name in ("overview", "tree_shapes", "ranks", "label_means", "emojis", "length_by_rank"):
        assert (executed / f"{name}.png").stat().st_size > 5000
