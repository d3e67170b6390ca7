"""Speed and memory benchmarks: each measures its subject beside a baseline in one run and reports the ratio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_worker(module: str, side: str, *args: str) -> dict:
    """Run one side of a benchmark in a fresh process (``python -m <module> --worker <side> ...``), offline, so no
    side inherits another's allocator state or warm caches; returns the JSON its last stdout line holds."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--worker", side, *args],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if out.returncode != 0:
        raise SystemExit(f"{module.rsplit('.', 1)[-1]}: the {side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
