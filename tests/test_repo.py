"""The repository URL lives in utils/pipeline/repo.py alone: notebooks' setup cells and README links follow it."""

from __future__ import annotations

import json
import shutil

import pytest

from utils.pipeline import repo
from utils.pipeline.stages import STAGES



def first_code_cell(path) -> str:
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


def test_every_notebook_and_colab_link_uses_the_one_url():
    for stage in STAGES:
        assert first_code_cell(repo.ROOT / "notebooks" / f"{stage}.ipynb") == repo.setup_cell(), f"{stage}: run python -m utils.pipeline.repo sync"
    links = repo.COLAB_LINK.findall((repo.ROOT / "README.md").read_text())
    assert sorted(links) == sorted(STAGES)
    for stage in STAGES:
        assert f"({repo.colab_url(stage)})" in (repo.ROOT / "README.md").read_text()


def test_sync_moves_every_place_to_a_forks_url(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for stage in STAGES:
        shutil.copy(repo.ROOT / "notebooks" / f"{stage}.ipynb", tmp_path / "notebooks")
    shutil.copy(repo.ROOT / "README.md", tmp_path)
    fork = "https://github.com/someone/my-fork"
    changed = repo.sync(tmp_path, fork)
    assert len(changed) == len(STAGES) + 1
    for stage in STAGES:
        cell = first_code_cell(tmp_path / "notebooks" / f"{stage}.ipynb")
        assert cell == repo.setup_cell(fork) and repo.REPO_URL not in cell
        assert repo.colab_url(stage, fork) in (tmp_path / "README.md").read_text()
    assert repo.REPO_URL.removeprefix("https://github.com/") not in (tmp_path / "README.md").read_text()
    assert repo.sync(tmp_path, fork) == []  # in sync: nothing to change


def test_readme_results_blocks_are_rewritten_from_the_run_reports(tmp_path):
    from utils.pipeline.repo import sync_readme

    report = ("# Run report: tiny\n\n| run |  |\n|---|---|\n| commit | abc1234 |\n\n## Results\n\n| player | Elo (judge) |\n"
              "|---|---|\n| ppo (k50) | 993 [949, 1032] |\n\n* (k50): replies sampled with temperature 1\n\n"
              "![reward against KL](05_evaluate/reward_vs_kl.png)\n\n## Each stage at a glance\n\n| figure | value | stage |\n")
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "report.md").write_text(report)
    readme = tmp_path / "README.md"
    readme.write_text("# Kit\n\n### tiny\n\n<!-- results:tiny -->\nold figures\n<!-- /results:tiny -->\n\nProse stays.\n")
    assert sync_readme(readme, tmp_path / "runs", write=False) == ["tiny"]  # --check: it differs
    assert "old figures" in readme.read_text()
    assert sync_readme(readme, tmp_path / "runs") == ["tiny"]
    text = readme.read_text()
    assert ("<!-- results:tiny -->\nFrom `runs/tiny/report.md` (`runs/` is not committed), written by `python -m utils.pipeline.repo readme`:\n\n"
            "| run |  |\n|---|---|\n| commit | abc1234 |\n\n| player | Elo (judge) |\n|---|---|\n| ppo (k50) | 993 [949, 1032] |\n\n"
            "* (k50): replies sampled with temperature 1\n<!-- /results:tiny -->\n\nProse stays.\n") in text
    assert sync_readme(readme, tmp_path / "runs") == []  # in step: nothing to do
    readme.write_text(text.replace("results:tiny", "results:smol"))
    with pytest.raises(FileNotFoundError, match="README.md: the results block 'smol' needs .*runs/smol/report.md"):
        sync_readme(readme, tmp_path / "runs")
