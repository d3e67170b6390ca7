"""Where stages put their results: ``runs/<profile>/<NN_stage>/`` with a ``metrics.json``.

A stage writes into ``out_dir``, which the runner renames into place only when the notebook finished.
So paths a stage records in its metrics are relative to its own directory when they point inside it
(``"adapter"``), and absolute otherwise (a shared cache); :func:`stage_path` resolves both.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:  # numpy / torch scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf; None says "not defined" honestly
    return x


def record_path(out_dir: str | Path, path: str | Path) -> str:
    """How a stage stores a path in its metrics: relative to ``out_dir`` when inside it."""
    out_dir, path = Path(out_dir).resolve(), Path(path).resolve()
    try:
        return str(path.relative_to(out_dir))
    except ValueError:
        return str(path)


def write_metrics(out_dir: str | Path, metrics: dict[str, Any], params: Any = None, run_dir: str | Path | None = None) -> Path:
    """Write ``metrics.json`` atomically (a reader never sees half a file).

    Every stage notebook ends with ``write_metrics(out, metrics, params, run_dir)``. Run by hand (not by the
    runner) into ``<run_dir>/<stage>``, the stage is then recorded as the runner would record it, from ``params``
    (the stage's ``Params``): ``stage.json``, same fingerprint, so ``python -m recipes.run --list`` shows it
    finished and the runner does not redo it. Under the runner ``out_dir`` is a temporary folder, which the runner
    records itself.
    """
    from utils.pipeline.stage_record import record_notebook_run

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (METRICS_FILE + ".tmp")
    # Keys keep the order the stage wrote them in: a results row reads player first, then its figures.
    tmp.write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
    os.replace(tmp, out / METRICS_FILE)
    if params is not None and run_dir is not None:
        record_notebook_run(out, params, run_dir)
    return out / METRICS_FILE


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage


def has_run(run_dir: str | Path, stage: str) -> bool:
    return (stage_dir(run_dir, stage) / METRICS_FILE).exists()


class StageNotRun(FileNotFoundError):
    """A stage needs the results of one that has not run (in this run folder).

    In a notebook it shows as its one-line message, not a traceback: what a student meets who opens
    ``04_ppo`` in JupyterLab before running 02 and 03 is every stage still to run and one command for them.
    """

    def __init__(self, run_dir: str | Path, missing: str | list[str], needed_by: str | None = None) -> None:
        from utils.pipeline.stages import upstream

        if isinstance(missing, str):  # one stage's results were asked for: it and every stage it needs still to run
            missing = [s for s in upstream(missing) if not has_run(run_dir, s)] + [missing]
        profile = Path(run_dir).name
        notebooks = ", ".join(f"notebooks/{s}.ipynb" for s in missing)
        what = f"stage {needed_by} needs {' and '.join(missing)}: not run" if needed_by else f"stage {missing[-1]} has not run"
        super().__init__(
            f"{what} in {run_dir}: run {notebooks} first{' (in this order)' if len(missing) > 1 else ''}, "
            f"or python -m recipes.run --profile {profile} --only {' '.join(missing)}"
        )

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of the traceback
        return [f"{type(self).__name__}: {self}"]


def begin_stage(run_dir: str | Path, out_dir: str | Path, stage: str, optional: tuple[str, ...] = ()) -> Path:
    """The first call of every stage notebook: its inputs are there, and its folder no longer says "finished".

    Every stage ``stage`` depends on, but those it can do without (``optional``: the evaluation compares
    whichever of DPO and PPO ran), must have run in ``run_dir``; else :class:`StageNotRun` names them
    all and one command that runs them. A notebook run by hand writes straight into ``<run_dir>/<stage>``:
    the old ``metrics.json`` and ``stage.json`` go first, so a run that stops half way leaves a stage that
    reads "not run", never new files under the old record. Under the runner ``out_dir`` is a fresh
    temporary folder.
    """
    from utils.pipeline.stage_record import STAGE_FILE
    from utils.pipeline.stages import upstream

    missing = [s for s in upstream(stage) if s not in optional and not has_run(run_dir, s)]
    if missing:
        raise StageNotRun(run_dir, missing, needed_by=stage)
    out = Path(out_dir)
    for name in (STAGE_FILE, METRICS_FILE):
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_metrics(run_dir: str | Path, stage: str) -> dict[str, Any]:
    """A finished stage's ``metrics.json``; :class:`StageNotRun` when the stage has not run in ``run_dir``."""
    if not has_run(run_dir, stage):
        raise StageNotRun(run_dir, stage)
    path = stage_dir(run_dir, stage) / METRICS_FILE
    return json.loads(path.read_text())


def stage_path(run_dir: str | Path, stage: str, key: str) -> Path:
    """A path recorded under ``key`` in a finished stage's metrics, resolved against that stage's dir."""
    metrics = read_metrics(run_dir, stage)
    if key not in metrics:
        raise KeyError(f"{stage_dir(run_dir, stage) / METRICS_FILE} has no {key!r}")
    return stage_dir(run_dir, stage) / metrics[key]
