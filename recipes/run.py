"""Run the pipeline: execute the notebooks of a profile in order with papermill.

    python -m recipes.run --profile tiny                # every stage, skipping the unchanged ones
    python -m recipes.run --profile tiny --from 03      # 03_reward and every stage that depends on it
    python -m recipes.run --profile tiny --from ppo     # 04_ppo and 05_evaluate (04 alone is ambiguous: 04_dpo or 04_ppo)
    python -m recipes.run --profile tiny --only sft --force
    python -m recipes.run --profile tiny --list         # each stage: finished, changed since, not run or failed

Each stage writes ``runs/<profile>/<NN_stage>/``: the executed notebook, ``metrics.json``, artifacts and
``stage.json``. It runs in a temporary folder renamed into place only when the notebook finished, so a
folder there is a finished stage. ``stage.json`` holds the stage's fingerprint: its effective parameters
(the notebook's defaults with the profile's values), its notebook's code and the fingerprints of the
stages it depends on (utils/pipeline/stages.py says which; utils/pipeline/stage_record.py). A rerun skips a stage whose
fingerprint is unchanged and redoes it otherwise, saying why (so changing SFT settings redoes DPO, PPO
and the evaluation but not the reward models, and changing PPO's redoes PPO and the evaluation, not DPO).
``python -m recipes.train`` and a notebook run by hand write the same record, so the runner knows what
they did.

Before the first stage runs, every stage's parameters are checked against its notebook's parameters cell
(names, types, files that must exist; utils/pipeline/notebook_params.py states the rules), so a typo fails in
one line naming profile, stage and key, not hours later. The run folder is locked while the runner works
(utils/pipeline/run_lock.py): a second runner or script on it is refused at once. ``<run_dir>/checkpoints/<stage>/``
outlives a failed attempt so the next one resumes; it is emptied when the stage's fingerprint changed and
by ``--force``, which starts a stage fresh.

A failing notebook ends the run with one line naming the stage, the cell and the error; the executed
notebook is kept in ``runs/<profile>/<NN_stage>.failed/`` for reading.

While a stage runs, one line shows its cell, its time against an estimate and what it printed last
(utils/pipeline/progress.py); torch in the notebooks uses as many threads as the process has cores (or
``OMP_NUM_THREADS``; utils/pipeline/machine.py), and a machine already busy before a stage is said to be. The
run ends with each stage's time and where the report is.

The rules for a stage notebook: its name is the stage's key in the profile and its folder's name
(``NN_name``, the number giving the order); it has one cell tagged ``parameters`` holding only
``name = literal`` lines, ``run_dir`` and ``out_dir`` among them; it writes its results into ``out_dir``
and ends with :func:`utils.pipeline.artifacts.write_metrics`; it never reassigns a parameter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.pipeline import machine
from utils.pipeline.notebook_params import RUNNER_PARAMS, ParameterError, declared_parameters, notebook_defaults
from utils.pipeline.profile import REPO_ROOT, Profile, load_profile
from utils.pipeline.run_lock import RunFolderInUse, RunLock, lock_holder
from utils.pipeline.stage_record import (
    StageRecord,
    checkpoint_folder,
    claim_checkpoints,
    failed_dir,
    publish,
    read_record,
    temporary_dir,
    tidy_checkpoints,
)
from utils.pipeline.progress import KERNEL_LOG, StageProgress, Ticker, format_seconds, kernel_log_lines, pace, register_engine
from utils.pipeline.stages import NOTEBOOKS_DIR, SFT, STAGE_NAME, downstream, notebook_path, upstream
from utils.sft.stage import first_build

RUNS_DIR = REPO_ROOT / "runs"

__all__ = ["NOTEBOOKS_DIR", "RUNS_DIR", "RUNNER_PARAMS", "StageError", "main", "notebook_defaults", "plan_stages",
           "resolve_stage", "run_profile", "stage_states"]


class StageError(Exception):
    """A stage could not run or failed: the message is the one line the user sees."""


class StageFailed(StageError):
    """A stage's notebook stopped with an error (the executed notebook is kept beside the run)."""


@dataclass
class StageResult:
    stage: str
    status: str  # "ran", "skipped" or "failed"
    seconds: float = 0.0


@dataclass
class PlannedStage:
    """A stage as the profile asks for it: its notebook, the parameters it runs with and those the profile sets."""

    stage: str
    notebook: Path
    params: dict[str, Any]
    overrides: dict[str, Any]


def resolve_stage(name: str, stages: list[str]) -> str:
    """``02_sft``, ``02``, ``sft`` and ``2`` all name stage 02_sft; a number two stages share (``04``: ``04_dpo``
    and ``04_ppo``) names neither, and says so."""
    matches = []
    for s in stages:
        number, _, short = s.partition("_")
        if name == s:
            return s
        if name in (number, short) or (name.isdigit() and number.isdigit() and int(name) == int(number)):
            matches.append(s)
    if len(matches) > 1:
        raise StageError(f"stage {name!r} is ambiguous: {' or '.join(matches)} (name one, e.g. {matches[0].partition('_')[2]!r})")
    if matches:
        return matches[0]
    raise StageError(f"no stage {name!r} in this profile (stages: {', '.join(stages)})")


def plan_stages(profile: Profile, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[PlannedStage]:
    """Every stage of the profile, checked (notebook, parameters cell, names, types, paths) before any runs."""
    planned = []
    for stage in sorted(profile.stages):
        if not STAGE_NAME.match(stage):
            raise StageError(f"{profile.path}: stage {stage!r}: a stage is named NN_name, as its notebook (e.g. 02_sft)")
        notebook = notebook_path(stage, notebooks_dir)
        if not notebook.is_file():
            raise StageError(f"{profile.path}: stage {stage} has no notebook {notebook}")
        try:
            declared_parameters(notebook)  # the notebook's own rules first: its parameters cell
        except ParameterError as e:
            raise StageError(str(e)) from None
        try:
            params = profile.stage_params(stage, notebooks_dir)
        except ParameterError as e:  # one line naming profile, stage and key
            raise StageError(str(e)) from None
        planned.append(PlannedStage(stage, notebook, params, profile.overrides(stage)))
    return planned


def expected_records(planned: list[PlannedStage]) -> dict[str, StageRecord]:
    """What each stage's record will be once the whole profile has run: upstream fingerprints are the profile's too."""
    stages = [p.stage for p in planned]
    records: dict[str, StageRecord] = {}
    for p in planned:
        ups = {dep: records[dep].fingerprint for dep in upstream(p.stage, stages)}
        records[p.stage] = StageRecord.make(p.stage, p.params, p.notebook, ups)
    return records


def stage_states(profile: Profile, run_dir: Path, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[tuple[str, str]]:
    """``(stage, state)`` for ``--list``: what a full run of the profile would do with each stage, and why."""
    planned = plan_stages(profile, notebooks_dir)
    expected = expected_records(planned)
    states = []
    for p in planned:
        on_disk = read_record(run_dir / p.stage)
        failed = failed_dir(run_dir, p.stage) / p.notebook.name
        if on_disk and on_disk.fingerprint == expected[p.stage].fingerprint:
            how = {"notebook": " (run by hand in its notebook)", "script": " (by python -m recipes.train)"}.get(on_disk.how, "")
            # Built on an upstream stage of this profile that something else replaced since: the run redoes that one
            # (with the settings this stage saw), then this one stands.
            replaced = [dep for dep, fp in on_disk.upstream.items() if read_record(run_dir / dep) is None
                        or read_record(run_dir / dep).fingerprint != fp]
            state = f"finished{how}" + (f" (on this profile's {', '.join(replaced)}, which is redone first)" if replaced else "")
        elif on_disk:
            state = f"changed since it ran: {expected[p.stage].differences(on_disk)}"
        elif failed.exists():
            state = f"failed: {failed}"
        else:
            state = "not run"
        states.append((p.stage, state))
    return states


def failure_line(stage: str, err: Exception, kept: Path) -> str:
    """One line: the stage, the cell and the error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = (err.source or "").strip().splitlines()
        where = f"cell In [{err.exec_count}]" + (f" ({first[0][:60]!r})" if first else "")
        evalue = " ".join(str(err.evalue).split())[:300]
        return f"stage {stage} failed in {where}: {err.ename}: {evalue} (executed notebook: {kept})"
    return f"stage {stage} failed: {type(err).__name__}: {' '.join(str(err).split())[:300]} (executed notebook: {kept})"


def code_cells(notebook: Path) -> int:
    import nbformat

    return sum(c.cell_type == "code" for c in nbformat.read(notebook, as_version=4).cells)


def execute_stage(planned: PlannedStage, record: StageRecord, run_dir: Path, progress: StageProgress | None) -> None:
    import papermill

    stage, notebook = planned.stage, planned.notebook
    tmp, failed = temporary_dir(run_dir, stage), failed_dir(run_dir, stage)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    executed = tmp / notebook.name
    start = time.time()
    # The profile's own values, as fitted (an int given for a float arrives as a float); a dict merged with its default.
    given = {k: planned.params[k] for k in planned.overrides}
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={**given, "run_dir": str(run_dir), "out_dir": str(tmp)},
            cwd=str(REPO_ROOT),
            kernel_name="python3",
            engine_name=register_engine(),
            stage_progress=progress,
            kernel_log=str(tmp / KERNEL_LOG),
            progress_bar=False,
            request_save_on_cell_execute=True,
        )
    except Exception as err:  # the notebook's own error, or the kernel dying
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        said = kernel_log_lines(failed / KERNEL_LOG)
        raise StageFailed(failure_line(stage, err, failed / notebook.name)
                          + (f"; the kernel process wrote {len(said)} line(s) to {failed / KERNEL_LOG}" if said else "")) from None
    if not kernel_log_lines(tmp / KERNEL_LOG):
        (tmp / KERNEL_LOG).unlink(missing_ok=True)  # nothing but the shutdown's interrupt: nothing to keep
    record.how, record.seconds = "runner", round(time.time() - start, 1)
    record.write(tmp)
    publish(tmp, run_dir / stage)


def estimate_seconds(profile: Profile, stage: str, on_disk: StageRecord | None, factor: float | None = None) -> float | None:
    """How long ``stage`` should take: its last time in this run folder (this machine), else the profile's measured one,
    times this run's pace where one is known (:func:`utils.pipeline.progress.pace`)."""
    if on_disk is not None and on_disk.seconds:
        return float(on_disk.seconds)
    measured = profile.measured_seconds.get(stage)
    return measured * factor if measured and factor else measured


# The stage that builds or fetches the base model on its first run (the tiny base, a GGUF conversion, a hub download):
# the profiles' measured times leave that out, so its time says nothing about this machine's pace.
ONE_TIME_WORK = {SFT}


def run_pace(results: list[StageResult], measured: dict[str, float]) -> float | None:
    """This run's pace so far (:func:`utils.pipeline.progress.pace`), from the stages it ran but 02_sft."""
    return pace((r.seconds, measured.get(r.stage)) for r in results if r.status == "ran" and r.stage not in ONE_TIME_WORK)


def run_profile(
    profile: Profile,
    run_dir: Path | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    first: str | None = None,
    only: list[str] | None = None,
    force: bool = False,
    progress: bool = True,  # False: no progress line (tests)
    log=print,
) -> list[StageResult]:
    planned = plan_stages(profile, notebooks_dir)  # before anything is written: a bad profile leaves no trace
    stages = [p.stage for p in planned]
    run_dir = Path(run_dir or RUNS_DIR / profile.name)
    chosen = set(stages)
    if first:  # the stage and those that depend on it: --from 04_ppo leaves 04_dpo, an alternative, alone
        chosen = set(downstream(resolve_stage(first, stages), stages))
    if only:
        chosen = {resolve_stage(s, stages) for s in only}
    if run_dir.exists() and not run_dir.is_dir():
        raise StageError(f"run folder {run_dir} is a file, not a folder")
    if profile.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # Every kernel inherits this: torch uses the cores this process may use, not every core the machine has.
    os.environ.setdefault(machine.THREADS_VARIABLE, str(machine.available_cores()))

    expected = expected_records(planned)
    with RunLock(run_dir, command=f"python -m recipes.run --profile {profile.name}") as lock:
        if lock.took_over:
            log(f"took over the lock of {lock.took_over}, which is no longer running")
        results: list[StageResult] = []
        now: dict[str, str | None] = {}  # each stage's fingerprint as it stands in run_dir once this run passed it
        for i, p in enumerate(planned, 1):
            head = f"[{i}/{len(planned)}] {p.stage}"
            on_disk = read_record(run_dir / p.stage)
            record = StageRecord.make(p.stage, p.params, p.notebook, {dep: now[dep] for dep in upstream(p.stage, stages)})
            if p.stage not in chosen:
                now[p.stage] = on_disk.fingerprint if on_disk else None
                used = any(p.stage in upstream(s, stages) for s in chosen)
                if used and (on_disk is None or on_disk.fingerprint != expected[p.stage].fingerprint):
                    log(f"{head}: not this profile's ({expected[p.stage].differences(on_disk)}); the stages after it use it as it is")
                continue
            now[p.stage] = record.fingerprint
            if not force and on_disk and on_disk.fingerprint == record.fingerprint:
                log(f"{head}: unchanged, skipped (--force to redo)")
                results.append(StageResult(p.stage, "skipped"))
                continue
            folder, default_location = checkpoint_folder(run_dir, p.stage, p.params, REPO_ROOT)
            note = claim_checkpoints(folder, record.fingerprint, force, default_location)
            if note:
                log(f"{head}: {note}")
            log(f"{head}: running {p.notebook.name} ({'--force' if force else record.differences(on_disk)}) ...")
            load = machine.running_now()  # other work on the cores as this stage starts
            busy = machine.busy_note(load=load)
            if busy:
                log(f"{head}: {busy}")
            record.machine, record.commit = machine.describe(others_running=load), machine.commit(REPO_ROOT)
            t0 = time.time()
            shown = None
            if progress:
                estimate = estimate_seconds(profile, p.stage, on_disk, run_pace(results, profile.measured_seconds))
                paced = estimate != estimate_seconds(profile, p.stage, on_disk)  # the line says the pace scaled it
                built = first_build(p.params, REPO_ROOT) if p.stage == SFT else None
                if built:  # a fresh clone: the profile's measured time found the base already in the cache
                    log(f"{head}: builds {built[0]} first, once (about {format_seconds(built[1])} on 2 cores; "
                        f"later runs find it in {p.params['base_cache_dir']})")
                    estimate = (estimate or 0.0) + built[1]
                shown = StageProgress(head, code_cells(p.notebook), estimate, paced=paced)
            try:
                if shown is None:
                    execute_stage(p, record, run_dir, None)
                else:
                    with Ticker(shown):
                        execute_stage(p, record, run_dir, shown)
            except StageError:
                results.append(StageResult(p.stage, "failed", time.time() - t0))
                raise
            tidy_checkpoints(folder, default_location)
            results.append(StageResult(p.stage, "ran", time.time() - t0))
            log(f"{head}: done in {format_seconds(time.time() - t0)} -> {run_dir / p.stage}")
            said = kernel_log_lines(run_dir / p.stage / KERNEL_LOG)
            if said:
                log(f"{head}: the kernel process wrote {len(said)} line(s) outside the notebook, e.g. {said[0][:120]!r}: "
                    f"{run_dir / p.stage / KERNEL_LOG}")
    return results


def write_run_report(run_dir: Path) -> Path | None:
    """The whole run's report; a run without it still stands."""
    try:
        from utils.pipeline.report import write_report
    except ImportError:
        return None
    return write_report(run_dir)


def summary(results: list[StageResult], run_dir: Path, seconds: float, report: Path | None,
            measured: dict[str, float] | None = None) -> list[str]:
    """The run's last lines: each stage's time, the total, how this machine's pace compares with the profile's
    ``measured`` times (where it differs by more than 15%), and where the report is."""
    lines = [f"{r.stage:20s} {r.status:8s} {format_seconds(r.seconds) if r.status != 'skipped' else 'unchanged'}" for r in results]
    ran = sum(r.status == "ran" for r in results)
    lines.append(f"{ran} stage(s) ran, {len(results) - ran} unchanged, in {format_seconds(seconds)}: {run_dir}")
    factor = run_pace(results, measured or {})
    if factor is not None and abs(factor - 1) > 0.15:
        lines.append(f"pace: the stages took {factor:.2f}× the times the profile measured (`measured:` in its YAML names that machine)")
    if report is not None:
        lines.append(f"report: {report} (and {report.with_suffix('.html').name} beside it, one file that opens offline)")
    return lines


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m recipes.run", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny", help="a name in recipes/profiles/ or a path to a YAML profile")
    ap.add_argument("--run-dir", type=Path, help="where results go (default runs/<profile>)")
    ap.add_argument("--from", dest="first", metavar="STAGE", help="run this stage and the ones after it")
    ap.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages")
    ap.add_argument("--force", action="store_true", help="rerun stages even when unchanged, their checkpoints deleted")
    ap.add_argument("--list", action="store_true", help="list the profile's stages and their state, run nothing")
    ap.add_argument("--on-error", choices=["raise", "skip"],
                    help="every stage's on_error: 'skip' skips bad records (counted in each stage's metrics) instead of stopping")
    ap.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help="where the stage notebooks are (default notebooks/)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="STAGE.KEY=VALUE",
                    help="override one stage parameter of the profile (YAML value), e.g. --set 03_reward.length_head=true; "
                         "give a --run-dir so the variant does not replace the profile's run")
    args = ap.parse_args(argv)
    t0, report = time.time(), None
    try:
        profile = load_profile(args.profile)
        if args.on_error:
            profile = profile.with_everywhere("on_error", args.on_error, args.notebooks_dir)
        for setting in args.settings:
            profile = profile.with_setting(setting)
        run_dir = args.run_dir or RUNS_DIR / profile.name
        if run_dir.exists() and not run_dir.is_dir():
            raise StageError(f"--run-dir {run_dir} is a file, not a folder")
        if args.list:
            holder = lock_holder(run_dir) if run_dir.is_dir() else None
            if holder:
                print(f"{run_dir} is in use by {holder}")
            for stage, state in stage_states(profile, run_dir, args.notebooks_dir):
                print(f"{stage:20s} {state}")
            return 0
        plan_stages(profile, args.notebooks_dir)  # a profile that cannot run leaves no run folder behind
        try:
            results = run_profile(profile, run_dir, args.notebooks_dir, first=args.first, only=args.only, force=args.force)
        finally:
            if run_dir.is_dir() and not lock_holder(run_dir):  # not into a folder another process is writing
                report = write_run_report(run_dir)  # a failed run gets its report too: what finished, and what failed
    except (StageError, RunFolderInUse, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        if isinstance(e, StageFailed) and report is not None:
            print(f"report of what finished: {report}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept, the interrupted one starts again (from its checkpoints) next run",
              file=sys.stderr)
        return 130
    print("\n".join(summary(results, run_dir, time.time() - t0, report, profile.measured_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
