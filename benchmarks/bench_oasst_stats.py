"""``stats`` on an OASST1-sized flat export against the bare parse of the same file, in one run.

The export is made from the shipped sample (2,022 messages) copied under fresh ids until it holds as
many messages as OASST1 (161,443), written to a temporary folder. Measured in CPU time of this process
(steadier than wall time on a shared machine), best of ``--repeat``, the three run in turn:

* ``parse``: ``orjson.loads`` of every line into a list, the parsed file held in memory and then freed
  (cyclic GC off, its fastest form) -- what any reader that keeps the messages must at least do;
* ``stream``: ``orjson.loads`` of every line, each object dropped at once (nothing kept);
* ``stats``: ``python -m utils.oasst stats`` in-process: read, check every record, build the trees,
  count every view, report.

The target is stats <= 1.5 x parse; the ratio to the streaming parse is printed too. Peak memory of
each is measured with tracemalloc in a separate, untimed pass.
Run: ``python -m benchmarks.bench_oasst_stats [--messages N] [--repeat R] [--json]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import orjson

from utils.oasst.cli import stats

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "oasst1_en_validation_messages.jsonl"
OASST1_MESSAGES = 161_443
TARGET_RATIO = 1.5


def make_export(path: Path, n_messages: int = OASST1_MESSAGES) -> int:
    """Write copies of the sample with fresh ids (``<id>-<copy>``) until ``n_messages``; returns the count."""
    sample = [orjson.loads(line) for line in SAMPLE.read_bytes().splitlines() if line.strip()]
    written = 0
    with path.open("wb") as f:
        copy = 0
        while written < n_messages:
            for m in sample[: n_messages - written]:
                m = dict(m)
                for key in ("message_id", "parent_id", "message_tree_id"):
                    if m[key] is not None:
                        m[key] = f"{m[key]}-{copy}"
                f.write(orjson.dumps(m) + b"\n")
                written += 1
            copy += 1
    return written


def parse(path: Path) -> int:
    enabled = gc.isenabled()
    gc.disable()
    try:
        with path.open("rb") as f:
            messages = [orjson.loads(line) for line in f]
        return len(messages)
    finally:
        if enabled:
            gc.enable()


def stream(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        for line in f:
            orjson.loads(line)
            n += 1
    return n


def best_times(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            t = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t)
    return best


def peak_mb(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run(n_messages: int = OASST1_MESSAGES, repeat: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oasst_flat.jsonl"
        n = make_export(path, n_messages)
        counts = stats([str(path)])
        fns = {"parse": lambda: parse(path), "stream": lambda: stream(path), "stats": lambda: stats([str(path)])}
        t = best_times(fns, repeat)
        peaks = {name: peak_mb(fn) for name, fn in fns.items()}
        return {
            "messages": n,
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "trees": counts["trees"],
            **{f"{name}_cpu_s": round(v, 3) for name, v in t.items()},
            "ratio": round(t["stats"] / t["parse"], 2),
            "ratio_to_stream": round(t["stats"] / t["stream"], 2),
            "target_ratio": TARGET_RATIO,
            **{f"{name}_peak_mb": round(v, 1) for name, v in peaks.items()},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=OASST1_MESSAGES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(args.messages, args.repeat)
    if args.json:
        print(json.dumps(r))
        return
    print(f"flat export: {r['messages']:,} messages, {r['trees']:,} trees, {r['file_mb']} MB")
    for name, what in (("parse", "parse into memory"), ("stream", "streaming parse"), ("stats", "stats")):
        print(f"{what:<18} {r[name + '_cpu_s']:7.3f} s CPU   peak {r[name + '_peak_mb']:7.1f} MB")
    verdict = "within" if r["ratio"] <= TARGET_RATIO else "OVER"
    print(f"stats / parse:  {r['ratio']:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    print(f"stats / stream: {r['ratio_to_stream']:.2f}x")


if __name__ == "__main__":
    main()
