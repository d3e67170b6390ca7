"""A finished stage's record, ``<run_dir>/<stage>/stage.json``, and the fingerprint in it.

The fingerprint covers everything a stage reads: its effective parameters (the notebook's defaults with the
profile's values fitted in, so leaving a key out and listing its default are the same run), its notebook's
code (the code cells' sources, so outputs saved by JupyterLab change nothing; the parameters cell is left
out, its values are the parameters), and the fingerprints of the stages it depends on as they were when it
ran. The runner, ``python -m recipes.train`` and a notebook run by hand (through
:func:`utils.pipeline.artifacts.write_metrics`) all write the same record, so each knows what the others did; the
record keeps the parts of the fingerprint, so a stage that must be redone can say why.

A stage is written into a temporary folder and renamed into place whole (:func:`publish`): a folder named
after a stage is a finished stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.pipeline.notebook_params import RUNNER_PARAMS, effective_parameters
from utils.pipeline.stages import NOTEBOOKS_DIR, REPO_ROOT, STAGES, notebook_path, upstream

STAGE_FILE = "stage.json"
FAILED_SUFFIX = ".failed"


def code_hash(notebook: str | Path) -> str:
    """The sources of the notebook's code cells, the parameters cell left out: what it does, not what it showed."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    h = hashlib.sha256()
    for cell in cells:
        if cell.get("cell_type") != "code" or {"parameters", "injected-parameters"} & set(cell.get("metadata", {}).get("tags", [])):
            continue
        source = cell["source"]
        h.update(("".join(source) if isinstance(source, list) else source).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _canonical(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def fingerprint(stage: str, params: dict[str, Any], code: str, upstream_fps: dict[str, str | None]) -> str:
    parts = {"stage": stage, "params": params, "code": code, "upstream": upstream_fps}
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    """What a stage ran with: its fingerprint and the parts it was made of."""

    stage: str
    fingerprint: str
    parameters: dict[str, Any]
    code: str
    upstream: dict[str, str | None]
    how: str = "runner"  # "runner", "script" or "notebook"
    seconds: float | None = None
    finished: str | None = None
    # Where it ran, never part of the fingerprint: the kit's commit, and cores, threads, load, GPU (utils.pipeline.machine).
    commit: str | None = None
    machine: dict[str, Any] | None = None

    @classmethod
    def make(cls, stage: str, params: dict[str, Any], notebook: Path, upstream_fps: dict[str, str | None], **kw) -> "StageRecord":
        code = code_hash(notebook)
        return cls(stage, fingerprint(stage, params, code, upstream_fps), params, code, upstream_fps, **kw)

    def write(self, folder: str | Path) -> Path:
        from utils.pipeline import machine

        self.finished = self.finished or time.strftime("%Y-%m-%dT%H:%M:%S")
        self.commit = self.commit or machine.commit(REPO_ROOT)
        self.machine = self.machine or machine.describe()
        path = Path(folder) / STAGE_FILE
        tmp = path.with_name(STAGE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path

    def differences(self, old: "StageRecord | None") -> str:
        """Why ``old`` (what is on disk) is not this run, in a few words."""
        if old is None:
            return "not run"
        if old.fingerprint == self.fingerprint:
            return ""
        if not old.code:  # a record without its parts: written before fingerprints covered code and upstream
            return "recorded by an older version of the runner"
        reasons = []
        changed = sorted(k for k in set(self.parameters) | set(old.parameters)
                         if _canonical(self.parameters.get(k)) != _canonical(old.parameters.get(k)))
        if changed:
            shown = [f"{k} {_short(old.parameters.get(k, '(absent)'))} -> {_short(self.parameters.get(k, '(absent)'))}" for k in changed[:3]]
            reasons.append("parameters " + ", ".join(shown) + (f" and {len(changed) - 3} more" if len(changed) > 3 else ""))
        if old.code != self.code:
            reasons.append("notebook code changed")
        for dep in sorted(set(self.upstream) | set(old.upstream)):
            if old.upstream.get(dep) != self.upstream.get(dep):
                reasons.append(f"{dep} was not finished when it ran" if old.upstream.get(dep) is None else f"{dep} changed")
        return "; ".join(reasons) or "a different fingerprint"


def _short(value: Any, width: int = 40) -> str:
    text = _canonical(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def read_record(stage_dir: str | Path) -> StageRecord | None:
    """The record of a finished stage, or None (not run, or a folder the runner does not vouch for)."""
    try:
        raw = json.loads((Path(stage_dir) / STAGE_FILE).read_text())
        return StageRecord(
            stage=raw["stage"], fingerprint=raw["fingerprint"], parameters=raw.get("parameters") or {},
            code=raw.get("code", ""), upstream=raw.get("upstream") or {}, how=raw.get("how", "runner"),
            seconds=raw.get("seconds"), finished=raw.get("finished"), commit=raw.get("commit"), machine=raw.get("machine"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_fingerprint(run_dir: str | Path, stage: str) -> str | None:
    record = read_record(Path(run_dir) / stage)
    return record.fingerprint if record else None


def upstream_on_disk(run_dir: str | Path, stage: str, stages: list[str] | tuple[str, ...] = STAGES) -> dict[str, str | None]:
    """The fingerprints of the stages ``stage`` depends on, as they are now in ``run_dir``."""
    return {dep: recorded_fingerprint(run_dir, dep) for dep in upstream(stage, stages)}


def failed_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / f"{stage}{FAILED_SUFFIX}"


def temporary_dir(run_dir: str | Path, stage: str) -> Path:
    """Where a stage is written until it finished (not named after the stage: a stage folder is a finished stage)."""
    return Path(run_dir) / f".{stage}.tmp"


def publish(tmp: Path, final: Path) -> None:
    """Swap the finished ``tmp`` into ``final``: the old result goes away only once the new one is complete."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    shutil.rmtree(failed_dir(final.parent, final.name), ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# A notebook run by hand (JupyterLab, or papermill without the runner)


def record_notebook_run(out_dir: str | Path, params: Any, run_dir: str | Path, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                        log=print) -> Path | None:
    """Record a stage the way the runner does when its notebook ran by hand into ``<run_dir>/<stage>``.

    ``params`` is the stage's ``Params`` (or a dict of its values), fitted to the declared types as the runner
    fits a profile's. Anywhere else (the runner's temporary folder, a folder of one's own) nothing is recorded.
    """
    out, run_dir = Path(out_dir), Path(run_dir)
    if out.name not in STAGES or out.resolve().parent != run_dir.resolve():
        return None
    from utils.pipeline.run_lock import lock_holder

    holder = lock_holder(run_dir)
    if holder:
        log(f"not recorded as finished: {run_dir} is in use by {holder}, which will replace this stage")
        return None
    notebook = notebook_path(out.name, notebooks_dir)
    values = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)
    try:
        fitted = effective_parameters(notebook, {k: v for k, v in values.items() if k not in RUNNER_PARAMS})
    except ValueError as e:
        log(f"not recorded as finished: {e}")
        return None
    record = StageRecord.make(out.name, fitted, notebook, upstream_on_disk(run_dir, out.name), how="notebook")
    return record.write(out)


# ----------------------------------------------------------------------------------------------------
# Checkpoints between attempts


CHECKPOINT_MARK = ".fingerprint"


def checkpoint_folder(run_dir: str | Path, stage: str, params: dict[str, Any], root: str | Path) -> tuple[Path, bool]:
    """A stage's checkpoint folder (its ``checkpoint_dir`` parameter if set) and whether it is the default one."""
    from utils.pipeline.stages import checkpoint_dir

    custom = params.get("checkpoint_dir")
    if custom:
        return Path(root) / custom, False  # relative paths start where the notebooks run: the repository root
    return checkpoint_dir(run_dir, stage), True


def claim_checkpoints(folder: Path, fp: str, force: bool, default_location: bool) -> str | None:
    """Leave in ``folder`` only checkpoints of the run with fingerprint ``fp``; says what it did, if anything.

    A checkpoint resumes only the very run that made it: ``--force`` or another fingerprint (other
    parameters, notebook or upstream stages) empties the folder first. A folder given as a parameter and
    not marked by the runner may hold anything: it is left alone, and ``--force`` refuses to start on it.
    """
    mark = folder / CHECKPOINT_MARK
    note = None
    if folder.is_dir() and any(folder.iterdir()):
        recorded = mark.read_text().strip() if mark.is_file() else None
        if force or recorded != fp:
            if recorded is None and not default_location:
                if force:  # a fresh start was asked for, and these files could be resumed: never delete a user's files
                    raise ValueError(f"--force: the checkpoint_dir {folder} holds files the runner did not write; "
                                     "empty it or name another checkpoint_dir")
                return f"{folder} holds files the runner did not write: left as they are"
            shutil.rmtree(folder)
            note = f"removed the checkpoints in {folder} ({'--force' if force else 'another configuration made them'})"
    folder.mkdir(parents=True, exist_ok=True)
    mark.write_text(fp + "\n")
    return note


def tidy_checkpoints(folder: Path, default_location: bool) -> None:
    """After a finished stage: a checkpoint folder holding nothing but the mark goes (and ``checkpoints/`` if empty)."""
    if folder.is_dir() and [p.name for p in folder.iterdir()] in ([], [CHECKPOINT_MARK]):
        shutil.rmtree(folder)
        if default_location:
            try:
                folder.parent.rmdir()  # <run_dir>/checkpoints, only if empty
            except OSError:
                pass
