"""Per-stage throughput and peak memory of a profile, as one table.

    python -m benchmarks.run --profile tiny              # runs the pipeline (forced) into runs/bench/tiny
    python -m benchmarks.run --profile tiny --from-run runs/tiny   # tabulate a finished run instead

The pipeline runs through the runner exactly as `make pipeline` does; the table reads what each stage
measured itself (its metrics.json) and how long it took (its stage.json). It is written as Markdown to
benchmarks/results/<profile>.md with the machine it came from, for the README to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.stages import PPO, REWARD, SFT

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# What each stage's throughput is, from its own metrics: (column text, function of metrics).
THROUGHPUT = {
    SFT: ("tokens/s (training)", lambda m: m.get("tokens_per_second")),
    REWARD: ("pairs/s (training)", lambda m: m["pairs_train"] / m["train_seconds"] if m.get("train_seconds") else None),
    PPO: ("s/update", lambda m: m.get("seconds_per_update")),
}


def machine() -> str:
    """CPU model and cores, memory, and the GPU if any: where a table's figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        kib = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        parts.append(f"{kib / 2**20:.0f} GiB RAM")
    except (OSError, StopIteration):
        pass
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.append(f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    else:
        parts.append("no GPU")
    return "; ".join(parts) + f"; torch {torch.__version__}"


def stage_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit() and "." not in p.name):
        metrics = json.loads((stage_dir / "metrics.json").read_text()) if (stage_dir / "metrics.json").exists() else {}
        record = json.loads((stage_dir / "stage.json").read_text()) if (stage_dir / "stage.json").exists() else {}
        label, measure = THROUGHPUT.get(stage_dir.name, ("", lambda m: None))
        value = measure(metrics)
        rows.append({
            "stage": stage_dir.name,
            "seconds": record.get("seconds", metrics.get("seconds")),
            "throughput": f"{value:,.1f} {label}" if value is not None else "",
            "peak memory (MiB)": metrics.get("peak_memory_mb"),
            "device": metrics.get("device", ""),
        })
    return rows


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:,.0f}" if isinstance(v, float) else str(v)

    head = list(rows[0]) if rows else ["stage"]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[k]) for k in head) + " |" for r in rows]
    total = sum(r["seconds"] or 0 for r in rows)
    return "\n".join(lines + ["", f"Total: {total / 60:.1f} min."]) + "\n"


def write_table(name: str, text: str) -> Path:
    """Save a results table as ``benchmarks/results/<name>.md`` and print it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(text)
    print(text)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--from-run", type=Path, help="tabulate this finished run dir instead of running the pipeline")
    args = ap.parse_args(argv)
    profile = load_profile(args.profile)
    run_dir = args.from_run
    if run_dir is None:
        from recipes.run import run_profile

        run_dir = REPO_ROOT / "runs" / "bench" / profile.name
        run_profile(profile, run_dir, force=True, progress=False)
    rows = stage_rows(Path(run_dir))
    title = (f"### `{profile.name}` profile, measured {time.strftime('%Y-%m-%d')}\n\n"
             f"Machine: {machine()}. Peak memory: GPU tensors on a GPU, the process's resident set on a CPU.")
    write_table(profile.name, markdown(rows, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
