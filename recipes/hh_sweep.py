"""Helpful against harmless: stage 03 at several HH-RLHF weights, and what each weight trades.

    python -m recipes.hh_sweep --profile tiny                          # weights 0, 0.5, 1, 2, 4
    python -m recipes.hh_sweep --profile tiny --weights 0 1 4 --share 1.0 --out runs/tiny-hh-sweep
    python -m recipes.hh_sweep --profile tiny --set max_train_pairs=200  # any other stage-03 parameter, as recipes.train takes it

The HH paper's central tension (Bai et al., 2022): a reward model learns OASST's helpfulness rankings, and
HH-RLHF's harmless pairs, which prefer the reply that declines, pull the other way. Each weight is one run of
stage 03 with ``hh_weight`` set (``python -m recipes.train reward``) into a run folder of its own,
``<out>/weight-<W>/``; a weight whose stage is already there with the same settings is not run again. Then
``<out>/hh_sweep.md`` (a table) and ``<out>/hh_sweep.png`` (held-out OASST accuracy against HH accuracy, a point
per weight, for the proxy and the judge). Every HH accuracy is measured on the HH file's evaluation part, the
same lines at every weight (stage 03 splits the file independently of the weight), so the points compare. The
tiny profile's own stage 03 is one point of this sweep (its ``hh_weight``, 0 by default).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from recipes.run import RUNS_DIR, OneLineParser
from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.stages import REWARD

DEFAULT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def weight_dir(out: Path, weight: float) -> Path:
    return out / f"weight-{weight:g}"


def overrides_for(weight: float, share: float | None, extra: Sequence[str]) -> list[str]:
    return [*extra, f"hh_weight={weight}", *([f"hh_share={share}"] if share is not None else [])]


def is_done(run_dir: Path, profile: str, overrides: Sequence[str]) -> bool:
    """Whether ``run_dir`` already holds stage 03 run with exactly these settings (its fingerprint says)."""
    from recipes.train import stage_parameters
    from utils.pipeline.stage_record import StageRecord, read_record, upstream_on_disk
    from utils.pipeline.stages import notebook_path

    on_disk = read_record(run_dir / REWARD)
    if on_disk is None:
        return False
    params = stage_parameters(REWARD, profile, list(overrides))
    return on_disk.fingerprint == StageRecord.make(REWARD, params, notebook_path(REWARD), upstream_on_disk(run_dir, REWARD)).fingerprint


def run_weight(run_dir: Path, profile: str, overrides: Sequence[str]) -> None:
    command = [sys.executable, "-m", "recipes.train", "reward", "--profile", profile, "--run-dir", str(run_dir)]
    command += [arg for item in overrides for arg in ("--set", item)]
    proc = subprocess.run(command, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"error: stage 03 failed at {' '.join(overrides)} (command: {' '.join(command)})")


def sweep_rows(metrics_by_weight: Mapping[float, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per weight from each run's stage-03 metrics: the HH pairs trained on and both models' accuracies."""
    rows = []
    for weight, m in sorted(metrics_by_weight.items()):
        mix = m.get("hh_mix") or {}
        rows.append({
            "hh_weight": weight,
            "HH pairs (proxy)": (mix.get("pairs_train") or {}).get("proxy", 0),
            "OASST held-out (proxy)": m["eval_accuracy"],
            "HH harmless (proxy)": m["hh_accuracy"],
            "OASST held-out (judge)": m.get("judge_eval_accuracy"),
            "HH harmless (judge)": m.get("judge_hh_accuracy"),
            "OASST pairs": m["pairs_eval"],
            "HH pairs evaluated": m["hh_pairs"],
            "length baseline OASST": m["length_baseline_accuracy"],
            "length baseline HH": m["hh_length_baseline_accuracy"],
        })
    return rows


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(column: str, value: Any) -> str:
        if value is None:
            return "–"
        if column == "hh_weight":
            return f"{value:g}"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path):
    """Held-out OASST accuracy against HH accuracy, one point per weight, a line per reward model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for model, style in (("proxy", "o-"), ("judge", "s--")):
        points = [(r[f"HH harmless ({model})"], r[f"OASST held-out ({model})"], r["hh_weight"]) for r in rows
                  if r[f"HH harmless ({model})"] is not None]
        if not points:
            continue
        xs, ys, ws = zip(*points)
        ax.plot(xs, ys, style, label=f"{model} reward model")
        for x, y, w in points:
            ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.axvline(rows[0]["length baseline HH"], color="tab:red", lw=0.8, ls=":", label="length baseline (HH, OASST)")
    ax.axhline(rows[0]["length baseline OASST"], color="tab:red", lw=0.8, ls=":")
    ax.set(xlabel=f"HH-RLHF harmless accuracy ({rows[0]['HH pairs evaluated']} evaluation pairs)",
           ylabel=f"OASST held-out accuracy ({rows[0]['OASST pairs']} pairs)",
           title="Helpful against harmless: the reward model as HH's weight grows\n(numbers: hh_weight)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m recipes.hh_sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS), help="values of hh_weight (default 0 0.5 1 2 4)")
    ap.add_argument("--share", type=float, help="hh_share for every run (default: the profile's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="another stage-03 parameter")
    ap.add_argument("--out", type=Path, help="default runs/<profile>-hh-sweep")
    ap.add_argument("--on-error", choices=["raise", "skip"], help="stage 03's on_error (the same as --set on_error=...)")
    args = ap.parse_args(argv)
    if args.on_error:
        args.overrides.append(f"on_error={args.on_error}")
    try:
        profile = load_profile(args.profile)
        from recipes.train import stage_parameters

        stage_parameters(REWARD, args.profile, overrides_for(args.weights[0], args.share, args.overrides))  # a bad --set stops here
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if any(w < 0 for w in args.weights):
        print("error: --weights must be >= 0", file=sys.stderr)
        return 1
    out = args.out or RUNS_DIR / f"{profile.name}-hh-sweep"
    metrics = {}
    for weight in sorted(set(args.weights)):
        run_dir, overrides = weight_dir(out, weight), overrides_for(weight, args.share, args.overrides)
        if is_done(run_dir, args.profile, overrides):
            print(f"hh_weight {weight:g}: already run with these settings ({run_dir})")
        else:
            print(f"hh_weight {weight:g}: running stage 03 into {run_dir} ...", flush=True)
            run_weight(run_dir, args.profile, overrides)
        metrics[weight] = json.loads((run_dir / REWARD / "metrics.json").read_text())
    rows = sweep_rows(metrics)
    (out / "hh_sweep.md").write_text(markdown(rows))
    plot(rows, out / "hh_sweep.png")
    print(markdown(rows))
    print(f"table: {out / 'hh_sweep.md'}; plot: {out / 'hh_sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
