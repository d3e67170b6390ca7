"""The run report on a fake run dir: finished, failed, missing and odd stages all reported, never an error."""

import base64
import json
import re
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from utils.pipeline.figures import fmt
from utils.pipeline.report import legend, write_report

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
    (sft / "stage.json").write_text(json.dumps({
        "stage": "02_sft", "seconds": 61.5, "finished": "2026-11-23T10:00:00", "commit": "abc1234",
        "parameters": {"base_model": "tiny", "quantization": "nf4", "train_paths": ["data/a.jsonl"], "heldout_paths": ["data/b.jsonl"]},
        "machine": {"cores": 2, "threads": 2, "others_running": 2.5, "gpu": None, "cpu": "AMD EPYC, AVX2"}}))
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
        "table": [{"player": "ppo (k50)", "Elo (proxy*)": "1010 [1000, 1020]", "Elo (judge)": "995 [985, 1005]",
                   "win vs SFT": "0.45 [0.30, 0.60]", "words": "40", "KL to SFT": "1.50 [1.00, 2.00]", "perplexity": "9.1"},
                  {"player": "best_of_4 (k50)", "Elo (proxy*)": "1100 [1000, 1200]", "KL to SFT": "≤ 0.64 (analytic)"}],
        "sampling": {"k50": {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "max_new_tokens": 96}},
        "best_of_n": {"best_of_4 (k50)": 4},
        "length_controlled": {"judge": {"ppo (k50)": {"lc_win_rate": 0.0453, "ci": [6.5e-06, 0.471], "games": 28}}},
        "rl_check": [{"player": "ppo@4", "proxy gain": "+0.060 ± 0.011", "≥ best_of_2": "yes (+0.030)", "> 2 s.e.": "yes",
                      "KL ≤ target": "yes (1.50 vs 3)", "judge gain": "", "words gain": "+9.0"}],
        "a_new_kind_of_figure": {"deep": {"deeper": {"deepest": 1}}},
    }))
    (ev / "samples.md").write_text("| prompt | sft |\n")
    (ev / "stage.json").write_text(json.dumps({"stage": "05_evaluate", "seconds": 10.0, "finished": "2026-11-23T10:05:00"}))

    (run / "06_extra").mkdir()
    (run / "06_extra" / "metrics.json").write_text("{not json")
    return run


def test_report_leads_with_the_answer_then_gathers_every_stage(tmp_path):
    run = fake_run(tmp_path)
    md_path = write_report(run, expected=STAGES)
    assert md_path == run / "report.md"
    md = md_path.read_text()
    lines = md.splitlines()
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections == ["Results", "Each stage at a glance"] + STAGES + ["06_extra"]
    assert not [line for line in lines if '{"' in line]  # nowhere raw JSON

    def section(name):
        return md.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]

    # What was run, then the results table, within the first screen.
    assert "| commit | abc1234 (sft); not recorded (evaluate) |" in md
    assert "| machine | 2 cores (AMD EPYC, AVX2), 2 threads, no GPU (sft); not recorded (evaluate) |" in md
    assert "| shared machine | other work was running when these started, so their times are long: 02_sft (2.5 threads of other work running as it started) |" in md
    assert "policy the kit-built tiny GPT-NeoX (nf4)" in md and "train data/a.jsonl; held out data/b.jsonl (188 trees" in md
    head = "\n".join(lines[:40])
    assert "| player | Elo (proxy*) | Elo (judge) | win vs SFT | words | KL to SFT |" in head  # perplexity: in 05's detail
    assert "| ppo (k50) | 1010 [1000, 1020] | 995 [985, 1005] | 0.45 [0.30, 0.60] | 40 | 1.50 [1.00, 2.00] |" in head
    results = section("Results")
    # Every abbreviation of the table, explained beside it from the run's own metrics.
    assert "* (k50): replies sampled with temperature 1, top-k 50, top-p 0.95, at most 96 new tokens" in results
    assert "* best_of_4: of 4 such replies to a prompt, the one the proxy scores highest" in results
    assert "* proxy*: the reward model the RL stages and best-of-n optimise" in results
    assert "* ppo: stage 04_ppo, the kit's PPO against the proxy, from sft\n" in results  # only the players shown
    assert "* judge: an independent reward model" in results and "under the independent judge (judge)" in results
    assert ("| ppo@4 | +0.060 ± 0.011 | yes (+0.030) | yes | yes (1.50 vs 3) | – | +9.0 |") in results

    assert "| trees | 188 |" in section("01_explore_trees")
    sft = section("02_sft")
    assert "| eval_loss_before | 3.91 |" in sft
    assert "| peak_memory_mb | – |" in sft  # null: not defined
    assert "50 values: 0 … 49" in sft
    assert "in 1m01s" in sft
    assert "[02_sft.ipynb](02_sft/02_sft.ipynb)" in sft
    assert "![loss curve](02_sft/loss_curve.png)" in sft
    assert "Failed" in section("03_reward") and "03_reward.failed/03_reward.ipynb" in section("03_reward")
    assert section("04_ppo").strip() == "Not run."
    ev = section("05_evaluate")
    assert "| sft (k50) | 0.25 | [0.1, 0.4] | 31 | – |" in ev  # models: one row each, union of columns
    assert "### judges: proxy\n" in ev and "### judges: judge\n" in ev  # one section per judge
    assert "| trained_against | yes |" in ev and "| source | 03_reward/judge/reward_model |" in ev
    assert "| ppo (k50) | – | 0.6 |" in ev and "| ppo (k50) | – | 0.45 |" in ev  # each judge's win-rate matrix
    assert "| judge | 0.045 [0.000, 0.471] |" in ev  # an interval: one number of decimals for all three
    assert "| update | kl | proxy_reward | judge_reward |\n|---|---|---|---|\n| 0 | 0 | 0.1 | 0.2 |" in ev  # rows as a table
    assert "|  | deeper |\n|---|---|\n| deep | deepest 1 |" in ev  # unknown shapes still shown, readably
    assert "[samples.md](05_evaluate/samples.md)" in ev
    assert "metrics.json could not be read" in section("06_extra")

    glance = section("Each stage at a glance")
    assert "| SFT held-out loss after | 2.5 | 02_sft |" in glance


def test_the_legend_names_what_trained_each_player_shown_and_04_rloos_algorithm():
    table = [{"player": f"{p} (k50)"} for p in ("base", "sft", "rloo")]
    (line,) = [x for x in legend({"table": table}, "judge") if x.startswith("sft:")]
    assert line == ("sft: stage 02_sft, supervised fine-tuning on the OASST replies, from base; "
                    "rloo: stage 04_rloo, trl's RLOO against the proxy, from sft; base: the model SFT starts from")
    (line,) = [x for x in legend({"table": table}, "judge", rl_algorithm="grpo") if x.startswith("sft:")]
    assert "rloo: stage 04_rloo, trl's GRPO against the proxy (its algorithm parameter), from sft" in line


def test_a_run_without_its_evaluation_says_so_where_the_results_would_be(tmp_path):
    run = fake_run(tmp_path)
    shutil.rmtree(run / "05_evaluate")
    md = write_report(run, expected=STAGES).read_text()
    assert "## Results\n\nStage 05_evaluate has not run (or wrote no table)" in md


def test_html_is_self_contained(tmp_path):
    run = fake_run(tmp_path)
    write_report(run, expected=STAGES)
    page = (run / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [(run / "02_sft" / "loss_curve.png").read_bytes()]
    assert '<td class="short">sft (k50)</td>' in page
    # An estimate above its interval, never broken inside it.
    assert '<td class="short">1010<br><span class="ci">[1000, 1020]</span></td>' in page
    # Each stage's detail folded away; the answer is not.
    assert len(re.findall(r"<details><summary><h2>[^<]+</h2></summary>", page)) == len(STAGES) + 1
    assert "<details><summary><h2>04_ppo</h2></summary>" in page
    assert page.index("<h2>Results</h2>") < page.index("<details>")
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page)  # nothing fetched from elsewhere: it opens offline


def test_empty_run_dir(tmp_path):
    md = write_report(tmp_path / "nothing", expected=["01_explore_trees"]).read_text()
    assert "## 01_explore_trees\n\nNot run." in md


def test_fmt():
    assert fmt(0.123456) == "0.123"
    assert fmt(238.66) == "239" and fmt(1234.5) == "1,234"
    assert fmt(1234567) == "1,234,567"
    assert fmt(None) == "–"
    assert fmt(True) == "yes"
    assert fmt([1.0, 2.5]) == "[1, 2.5]"
    assert fmt({"rating": 915.64, "ci": [871.7, 961.3], "games": 720}) == "916 [872, 961]"
    assert fmt({"rate": 0.48333, "ci": [0.3548, 0.6079]}) == "0.483 [0.355, 0.608]"
    assert fmt({"heldout": 76, "orphaned": 3}) == "heldout 76, orphaned 3"
    long = fmt({f"key{i}": i for i in range(40)})
    assert len(long) <= 100 and long.endswith(" …") and "{" not in long
