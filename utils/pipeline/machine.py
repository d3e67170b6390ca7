"""What a stage ran on, and how many threads torch may use there.

On a 2-core laptop or a container with a CPU quota, torch's default of one thread per core it *sees* can be
many more threads than cores it may *use*; and two heavy jobs on the same cores slow each other several-fold.
So the kit sizes torch's thread pool from the cores actually available to the process (CPU affinity and a
cgroup quota, whichever is smaller), honours ``OMP_NUM_THREADS`` when the user set it, and records both, with
the machine's load when the stage started, in each stage's ``stage.json``: a slow run can be explained.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

THREADS_VARIABLE = "OMP_NUM_THREADS"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs a cgroup quota allows (``cpu.max`` of cgroup v2, ``cpu.cfs_*`` of v1), or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def thread_count(environ: dict[str, str] | None = None) -> int:
    """Threads for torch: ``OMP_NUM_THREADS`` where the user set a positive number, else the available cores."""
    value = (os.environ if environ is None else environ).get(THREADS_VARIABLE, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else available_cores()


def use_available_cores() -> int:
    """Size torch's thread pool by :func:`thread_count` (scripts and notebooks call this once, first)."""
    import torch

    threads = thread_count()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def load_average() -> float | None:
    """The machine's one-minute load average (runnable processes, decaying over a minute), or None where there is none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def running_now(samples: int = 10, interval: float = 0.1, proc: Path = Path("/proc/loadavg")) -> float | None:
    """Threads of other processes running right now (Linux), averaged over ``samples``; else the load average.

    Between two stages the load average still holds the stage that just ended (it decays over a minute), so it
    would call every machine busy; the instantaneous count of runnable threads does not.
    """
    counts = []
    for i in range(samples):
        try:
            runnable = int(proc.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return load_average()
        counts.append(runnable - 1)  # the reading process itself is running
        if i + 1 < samples:
            time.sleep(interval)
    return round(sum(counts) / len(counts), 2)


def is_busy(others_running: float | None, cores: int) -> bool:
    """Other work occupies most of a core or more: a stage started now shares the cores."""
    return others_running is not None and others_running >= max(1.0, 0.75 * cores)


def busy_note(cores: int | None = None, load: float | None = None) -> str | None:
    """A line saying the machine is already busy before a stage starts, or None.

    Load near the number of cores means other processes already use them: a stage then shares the cores
    and takes longer than its estimate (several-fold for a second training job on 2 cores).
    """
    cores = available_cores() if cores is None else cores
    load = running_now() if load is None else load
    if not is_busy(load, cores):
        return None
    return (f"the machine is busy before this stage starts (load {load:.1f} on {cores} core{'s' * (cores > 1)}): "
            "it will share the cores and take longer than its estimate")


def _gpu_name() -> str | None:
    """The first GPU's name from ``nvidia-smi`` (not torch: that would hold GPU memory in the runner's process)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return (names[0] + (f" (x{len(names)})" if len(names) > 1 else "")) if out.returncode == 0 and names else None


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model and its widest vector extension, e.g. ``"AMD EPYC, AVX2"``: torch's CPU kernels run
    wider (and faster) with AVX-512, so two 2-core machines of one name can differ in speed by it. Without
    ``/proc/cpuinfo``: the platform's name."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    widest = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), None)
    return f"{model}, {widest}" if widest else model


def describe(others_running: float | None = None, threads: int | None = None) -> dict[str, Any]:
    """What ``stage.json`` records about where a stage ran (never part of its fingerprint). ``others_running``: threads
    of other processes running as the stage started (:func:`running_now`), where the caller measured it (the runner
    and the scripts do);
    ``threads``: torch's, where the caller knows them (default :func:`thread_count`, what the kernels get)."""
    return {
        "cores": available_cores(),
        "threads": thread_count() if threads is None else threads,
        "others_running": others_running,
        "gpu": _gpu_name(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
    }


def commit(repo: Path) -> str | None:
    """The kit's git commit (``+changes`` when the tree differs from it), or None outside a git checkout."""
    if not (repo / ".git").exists() or not shutil.which("git"):
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.returncode == 0 and dirty.stdout.strip() else "")
