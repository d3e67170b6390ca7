"""The run report on a fake run dir: finished, failed, missing and odd stages all reported, never an error."""

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from utils.pipeline.report import fmt, write_report

STAGES = ["01_explore_trees", "02_sft", "03_reward", "04_ppo", "05_evaluate"]


def fake_run(root):
    run = root / "fake"
    (run / "01_explore_trees").mkdir(parents=True)
    (run / "01_explore_trees" / "metrics.json").write_text(json.dumps({"trees": 188, "messages": 1984}))

    sft = run / "02_sft"
    sft.mkdir()
    (sft / "metrics.json").write_text(json.dumps({
        "eval_loss_before": 3.912345, "eval_loss_after": 2.5, "adapter_dir": "adapter",
        "loss_curve": [float(i) for i in range(50)], "peak_memory_mb": None, "tokens_per_second": 123456.7,
    }))
    (sft / "stage.json").write_text(json.dumps({"stage": "02_sft", "seconds": 61.5, "finished": "2026-11-23T10:00:00"}))
    (sft / "02_sft.ipynb").write_text("{}")
    (sft / "adapter").mkdir()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(sft / "loss_curve.png")
    plt.close(fig)

    failed = run / "03_reward.failed"
    failed.mkdir()
    (failed / "03_reward.ipynb").write_text("{}")

    ev = run / "05_evaluate"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({
        "models": {"sft (k50)": {"reward_mean": 0.25, "reward_ci": [0.1, 0.4], "length_mean": 31.0},
                   "ppo (k50)": {"reward_mean": 0.5, "reward_ci": [0.3, 0.7], "kl": 1.5}},
        "judges": {
            "proxy": {"trained_against": True, "source": "03_reward/reward_model",
                      "elo": {"sft (k50)": {"rating": 990.0, "ci": [980.0, 1000.0]}, "ppo (k50)": {"rating": 1010.0, "ci": [1000.0, 1020.0]}},
                      "win_rates": {"ppo (k50)": {"sft (k50)": 0.6}, "sft (k50)": {"ppo (k50)": 0.4}}},
            "judge": {"trained_against": False, "source": "03_reward/judge/reward_model",
                      "elo": {"sft (k50)": {"rating": 1005.0, "ci": [995.0, 1015.0]}, "ppo (k50)": {"rating": 995.0, "ci": [985.0, 1005.0]}},
                      "win_rates": {"ppo (k50)": {"sft (k50)": 0.45}, "sft (k50)": {"ppo (k50)": 0.55}}},
        },
        "kl_curve": [{"update": 0, "kl": 0.0, "proxy_reward": 0.1, "judge_reward": 0.2},
                     {"update": 4, "kl": 1.5, "proxy_reward": 0.3, "judge_reward": 0.2}],
        "rl_check": [{"player": "ppo@4", "proxy gain": "+0.060 ± 0.011", "≥ best_of_2": "yes (+0.030)", "> 2 s.e.": "yes",
                      "KL ≤ target": "yes (1.50 vs 3)", "judge gain": "", "words gain": "+9.0"}],
        "a_new_kind_of_figure": {"deep": {"deeper": {"deepest": 1}}},
    }))
    (ev / "samples.md").write_text("| prompt | sft |\n")

    (run / "06_extra").mkdir()
    (run / "06_extra" / "metrics.json").write_text("{not json")
    return run


def test_report_gathers_every_stage(tmp_path):
    run = fake_run(tmp_path)
    md_path = write_report(run, expected=STAGES)
    assert md_path == run / "report.md"
    md = md_path.read_text()
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections == ["At a glance"] + STAGES + ["06_extra"]

    def section(name):
        return md.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]

    assert "| trees | 188 |" in section("01_explore_trees")
    sft = section("02_sft")
    assert "| eval_loss_before | 3.912 |" in sft
    assert "| peak_memory_mb | – |" in sft  # null: not defined
    assert "50 values: 0 … 49" in sft
    assert "in 61.5 s" in sft
    assert "[02_sft.ipynb](02_sft/02_sft.ipynb)" in sft
    assert "![loss curve](02_sft/loss_curve.png)" in sft
    assert "Failed" in section("03_reward") and "03_reward.failed/03_reward.ipynb" in section("03_reward")
    assert section("04_ppo").strip() == "Not run."
    ev = section("05_evaluate")
    assert "| sft (k50) | 0.25 | [0.1, 0.4] | 31 | – |" in ev  # models: one row each, union of columns
    assert "### judges: proxy\n" in ev and "### judges: judge\n" in ev  # one section per judge
    assert "| trained_against | false |" in ev and "| source | 03_reward/judge/reward_model |" in ev
    assert "| ppo (k50) | – | 0.6 |" in ev and "| ppo (k50) | – | 0.45 |" in ev  # each judge's win-rate matrix
    assert "| update | kl | proxy_reward | judge_reward |\n|---|---|---|---|\n| 0 | 0 | 0.1 | 0.2 |" in ev  # rows as a table
    assert '| deep | {"deepest": 1} |' in ev  # unknown shapes still shown
    assert "[samples.md](05_evaluate/samples.md)" in ev
    assert "metrics.json could not be read" in section("06_extra")

    glance = section("At a glance")
    assert "| SFT held-out loss after | 2.5 | 02_sft |" in glance
    assert "| highest Elo, judge proxy (PPO trained against it) | ppo (k50): 1010 | 05_evaluate |" in glance
    assert "| highest Elo, judge judge (independent) | sft (k50): 1005 | 05_evaluate |" in glance
    assert ("| RL on the fixed set: ppo@4 | proxy gain +0.060 ± 0.011; ≥ best_of_2 yes (+0.030); > 2 s.e. yes; "
            "KL ≤ target yes (1.50 vs 3); words gain +9.0 | 05_evaluate |") in glance


def test_html_is_self_contained(tmp_path):
    run = fake_run(tmp_path)
    write_report(run, expected=STAGES)
    page = (run / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [(run / "02_sft" / "loss_curve.png").read_bytes()]
    assert "<td>sft (k50)</td>" in page
    assert "<h2>04_ppo</h2>" in page


def test_empty_run_dir(tmp_path):
    md = write_report(tmp_path / "nothing", expected=["01_explore_trees"]).read_text()
    assert "## 01_explore_trees\n\nNot run." in md


def test_fmt():
    assert fmt(0.123456) == "0.1235"
    assert fmt(1234567) == "1,234,567"
    assert fmt(None) == "–"
    assert fmt(True) == "true"
    assert fmt([1.0, 2.5]) == "[1, 2.5]"
