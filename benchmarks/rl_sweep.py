"""Choose an RL stage's settings from a recorded sweep: each setting's gain on the fixed held-out prompts.

    python -m benchmarks.rl_sweep --profile tiny --set baseline=rloo,value --set learning_rate=1e-4,3e-4 --seeds 0 1
    python -m benchmarks.rl_sweep --stage 04_rloo --profile smol --set learning_rate=5.0e-4,8.0e-4

Each combination of the ``--set`` values (``KEY=V1,V2,...``, YAML values) and each seed runs the RL stage's own
flow (:func:`recipes.train.train_ppo` or :func:`recipes.train.train_rloo`, the notebook's calls in its order) on the profile's finished stages 02 and
03 in ``runs/<profile>`` (the runner's folder: run ``make pipeline`` first), one after another in this process, and
reads the last snapshot's point of the fixed set (:mod:`utils.rl.fixed_set`): the proxy's and the judge's gain over
update 0, paired by prompt, with standard errors over prompts, at its KL to SFT. The table goes to
``benchmarks/results/rl-sweep-<profile>.md`` (``--out``) with the command, the date and the machine. Nothing the
runner wrote is touched: each run works in a temporary folder inside the run folder, deleted afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import yaml

from benchmarks import ROOT as REPO_ROOT

COLUMNS = ["setting", "seed", "KL", "β last", "proxy gain", "judge gain", "proxy / √KL", "words", "ended", "s/update"]


def number_or_yaml(text: str):
    """``3e-4`` is a string to YAML 1.1; here it is the number a reader meant."""
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return yaml.safe_load(text)


def combinations(sets: list[str]) -> list[dict]:
    keys, values = [], []
    for item in sets:
        key, _, vals = item.partition("=")
        keys.append(key)
        values.append([number_or_yaml(v) for v in vals.split(",")])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)] or [{}]


def run_one(stage: str, profile: str, run_dir: Path, overrides: dict, seed: int) -> dict:
    from recipes.train import stage_parameters, train_ppo, train_rloo
    from utils.pipeline.stages import PPO, RLOO

    given = [f"{k}={v}" for k, v in {**overrides, "seed": seed}.items()]
    p = stage_parameters(RLOO if stage == RLOO else PPO, profile, given)
    out = run_dir / f".sweep-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # No checkpoints: a sweep neither resumes the runner's nor leaves its own (each stage's Params names its own keys).
    no_checkpoints = {"checkpoint_dir": str(out / "checkpoints"), "checkpoint_every": 0, "resume": False, "save_steps": 0}
    p.update({k: v for k, v in no_checkpoints.items() if k in p})
    started = time.time()
    try:
        metrics = (train_rloo if stage == RLOO else train_ppo)(p, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    last = metrics["progress"][-1]
    # RLOO's β is fixed (trl's RLOOTrainer has no adaptive controller)
    return {**last, "kl_coef_last": metrics.get("kl_coef_last", metrics.get("beta")), "seconds_per_update": metrics["seconds_per_update"],
            "seconds": time.time() - started}


def pm(mean, se) -> str:
    return "" if mean is None else f"{mean:+.3f} ± {se:.3f}"


def row(setting: dict, seed: int, r: dict) -> dict:
    return {
        "setting": ", ".join(f"{k}={v}" for k, v in setting.items()) or "(profile)",
        "seed": seed,
        "KL": f"{r['kl']:.2f}",
        "β last": f"{r['kl_coef_last']:.3f}",
        "proxy gain": pm(r["proxy_gain"], r["proxy_gain_se"]),
        "judge gain": pm(r.get("judge_gain"), r.get("judge_gain_se")),
        "proxy / √KL": f"{r['proxy_gain'] / max(r['kl'], 1e-6) ** 0.5:+.3f}",
        "words": f"{r['words']:.0f}",
        "ended": f"{r['ended_fraction']:.2f}",
        "s/update": f"{r['seconds_per_update']:.1f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="04_ppo", choices=["04_ppo", "04_rloo"])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--run-dir", default=None, help="default runs/<profile>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2", help="the stage's parameter values to sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=None, help="default benchmarks/results/rl-sweep-<profile>.md")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir or REPO_ROOT / "runs" / args.profile)
    out = Path(args.out or REPO_ROOT / "benchmarks" / "results" / f"rl-sweep-{args.profile}.md")
    command = "python -m benchmarks.rl_sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"### Stage {args.stage} settings on `{args.profile}`, measured {date.today().isoformat()}",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores. Each row: one run of stage "
        f"{args.stage}'s flow with the profile's other settings; its last snapshot on the fixed held-out prompts, gains over "
        "update 0 (the SFT policy) paired by prompt, ± one standard error over prompts. KL: to SFT, nats per reply.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:  # each row as soon as its run ends: a stopped sweep keeps what it measured
        f.write("\n".join(header) + "\n")
        for setting in combinations(args.set):
            for seed in args.seeds:
                r = row(setting, seed, run_one(args.stage, args.profile, run_dir, setting, seed))
                f.write("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n")
                f.flush()
                print(" | ".join(str(v) for v in r.values()), flush=True)
        f.write("\n")
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
