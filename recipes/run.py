"""Run the pipeline: execute the notebooks of a profile in order with papermill.

    python -m recipes.run --profile tiny                # every stage, skipping the unchanged ones
    python -m recipes.run --profile tiny --from 03      # 03_reward and after
    python -m recipes.run --profile tiny --only sft --force

Each stage writes ``runs/<profile>/<NN_stage>/``: the executed notebook, ``metrics.json`` and artifacts.
It runs in a temporary folder renamed into place only when the notebook finished, so a folder there is
a finished stage. Its ``stage.json`` records a fingerprint of the stage's parameters, its notebook and
the fingerprints of the stages before it: a rerun skips a stage whose fingerprint is unchanged and redoes
it otherwise (so changing SFT settings also redoes the reward, PPO and evaluation stages).
A failing notebook ends the run with one line naming the stage, the cell and the error; the executed
notebook is kept in ``runs/<profile>/<NN_stage>.failed/`` for reading.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.profile import REPO_ROOT, Profile, load_profile

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNS_DIR = REPO_ROOT / "runs"
STAGE_FILE = "stage.json"
RUNNER_PARAMS = ("run_dir", "out_dir")


class StageError(Exception):
    """A stage could not run or failed: the message is the one line the user sees."""


@dataclass
class StageResult:
    stage: str
    status: str  # "ran", "skipped" or "failed"
    seconds: float = 0.0


def resolve_stage(name: str, stages: list[str]) -> str:
    """``02_sft``, ``02``, ``sft`` and ``2`` all name stage 02_sft."""
    for s in stages:
        number, _, short = s.partition("_")
        if name in (s, number, short) or (name.isdigit() and number.isdigit() and int(name) == int(number)):
            return s
    raise StageError(f"no stage {name!r} in this profile (stages: {', '.join(stages)})")


def fingerprint(stage: str, params: dict[str, Any], notebook: Path, upstream: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"stage": stage, "params": params, "upstream": upstream}, sort_keys=True, default=str).encode())
    h.update(notebook.read_bytes())
    return h.hexdigest()[:16]


def finished_fingerprint(stage_dir: Path) -> str | None:
    try:
        return json.loads((stage_dir / STAGE_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The parameters cell of a notebook (the cell tagged ``parameters``, as papermill finds it) as values.

    Read with ``ast`` rather than papermill, so the training scripts run where papermill is not installed.
    """
    import ast

    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise StageError(f"{notebook}: no cell tagged 'parameters'")
    source = "".join(cell["source"])
    return {target.id: ast.literal_eval(node.value)
            for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def check_parameters(stage: str, notebook: Path, params: dict[str, Any], profile: Profile) -> None:
    """Every profile key must be a parameter of the notebook: a typo would otherwise be silently ignored."""
    declared = set(notebook_defaults(notebook))
    unknown = sorted(set(params) - declared - set(RUNNER_PARAMS))
    if unknown:
        raise StageError(
            f"{profile.path}: stage {stage} sets {', '.join(unknown)}, which {notebook.name} does not declare "
            f"in its parameters cell (it declares: {', '.join(sorted(declared)) or 'nothing'})"
        )


def failure_line(stage: str, err: Exception, kept: Path) -> str:
    """One line: the stage, the cell and the error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = (err.source or "").strip().splitlines()
        where = f"cell In [{err.exec_count}]" + (f" ({first[0][:60]!r})" if first else "")
        evalue = " ".join(str(err.evalue).split())[:300]
        return f"stage {stage} failed in {where}: {err.ename}: {evalue} (executed notebook: {kept})"
    return f"stage {stage} failed: {type(err).__name__}: {' '.join(str(err).split())[:300]} (executed notebook: {kept})"


def execute_stage(stage: str, notebook: Path, params: dict[str, Any], run_dir: Path, fp: str, progress: bool) -> None:
    import papermill

    final = run_dir / stage
    tmp = run_dir / f".{stage}.tmp"
    failed = run_dir / f"{stage}.failed"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    executed = tmp / notebook.name
    start = time.time()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={**params, "run_dir": str(run_dir), "out_dir": str(tmp)},
            cwd=str(REPO_ROOT),
            kernel_name="python3",
            progress_bar=progress,
            request_save_on_cell_execute=True,
        )
    except Exception as err:  # the notebook's own error, or the kernel dying
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        raise StageError(failure_line(stage, err, failed / notebook.name)) from None
    record = {"stage": stage, "fingerprint": fp, "seconds": round(time.time() - start, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "parameters": params}
    (tmp / STAGE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    # The swap: the old result goes away only once the new one is complete.
    if final.exists():
        old = run_dir / f".{stage}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    shutil.rmtree(failed, ignore_errors=True)


def run_profile(
    profile: Profile,
    run_dir: Path | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    first: str | None = None,
    only: list[str] | None = None,
    force: bool = False,
    progress: bool | None = None,
    log=print,
) -> list[StageResult]:
    stages = sorted(profile.stages)
    run_dir = Path(run_dir or RUNS_DIR / profile.name)
    chosen = set(stages)
    if first:
        start = stages.index(resolve_stage(first, stages))
        chosen = set(stages[start:])
    if only:
        chosen = {resolve_stage(s, stages) for s in only}
    for stage in stages:
        if not (notebooks_dir / f"{stage}.ipynb").exists():
            raise StageError(f"{profile.path}: stage {stage} has no notebook {notebooks_dir / (stage + '.ipynb')}")
        check_parameters(stage, notebooks_dir / f"{stage}.ipynb", profile.stage_params(stage), profile)
    if profile.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if progress is None:
        progress = sys.stderr.isatty()
    run_dir.mkdir(parents=True, exist_ok=True)

    results: list[StageResult] = []
    upstream = ""
    for i, stage in enumerate(stages, 1):
        notebook = notebooks_dir / f"{stage}.ipynb"
        params = profile.stage_params(stage)
        fp = fingerprint(stage, params, notebook, upstream)
        upstream = fp
        head = f"[{i}/{len(stages)}] {stage}"
        if stage not in chosen:
            continue
        if not force and finished_fingerprint(run_dir / stage) == fp:
            log(f"{head}: unchanged, skipped (--force to redo)")
            results.append(StageResult(stage, "skipped"))
            continue
        log(f"{head}: running {notebook.name} ...")
        t0 = time.time()
        try:
            execute_stage(stage, notebook, params, run_dir, fp, progress)
        except StageError:
            results.append(StageResult(stage, "failed", time.time() - t0))
            raise
        results.append(StageResult(stage, "ran", time.time() - t0))
        log(f"{head}: done in {format_seconds(time.time() - t0)} -> {run_dir / stage}")
    return results


def format_seconds(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


def write_run_report(run_dir: Path, log=print) -> None:
    """The whole run's report (stage 05 owns its format); a run without it still stands."""
    try:
        from utils.report import write_report
    except ImportError:
        return
    path = write_report(run_dir)
    log(f"report: {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.run", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny", help="a name in recipes/profiles/ or a path to a YAML profile")
    ap.add_argument("--run-dir", type=Path, help="where results go (default runs/<profile>)")
    ap.add_argument("--from", dest="first", metavar="STAGE", help="run this stage and the ones after it")
    ap.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages")
    ap.add_argument("--force", action="store_true", help="rerun stages even when unchanged")
    ap.add_argument("--list", action="store_true", help="list the profile's stages and their state, run nothing")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        profile = load_profile(args.profile)
        run_dir = args.run_dir or RUNS_DIR / profile.name
        if args.list:
            for stage in sorted(profile.stages):
                state = "finished" if finished_fingerprint(run_dir / stage) else "not run"
                print(f"{stage:20s} {state}")
            return 0
        try:
            results = run_profile(profile, run_dir, first=args.first, only=args.only, force=args.force)
        finally:
            write_run_report(run_dir)  # a failed run gets its report too: what finished, and what failed
    except (StageError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    ran = sum(r.status == "ran" for r in results)
    print(f"{ran} stage(s) ran, {len(results) - ran} unchanged, in {format_seconds(time.time() - t0)}: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
