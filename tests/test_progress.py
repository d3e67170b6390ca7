"""What the runner shows while a stage runs, what it records about the machine, and its closing summary."""

from __future__ import annotations

import io
import json
import platform
from pathlib import Path

import pytest

from recipes.run import StageResult, estimate_seconds, summary
from utils.pipeline import machine
from utils.pipeline.profile import load_profile
from utils.pipeline.progress import LOG_EVERY, StageProgress, format_seconds, pace
from utils.pipeline.stage_record import StageRecord


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cell:
    def __init__(self, cell_type: str, *tags: str):
        self.cell_type = cell_type
        self.metadata = {"tags": list(tags)}


def test_the_line_shows_the_cell_the_time_against_the_estimate_and_the_last_thing_printed():
    clock = Clock()
    p = StageProgress("[3/7] 03_reward", code_cells=14, estimate=155, clock=clock, out=io.StringIO(), interactive=True)
    for kind in ("markdown", "code", "markdown", "code"):
        p.cell_started(Cell(kind))
    p.write("epoch 1\nstep 10/40 loss 0.69\r")
    p.write("step 20/40 loss 0.61\r")  # a bar redrawn in place: its latest state counts
    clock.now += 72
    assert p.line() == "[3/7] 03_reward  cell 2/14  1m12s of ~2m35s  | step 20/40 loss 0.61"
    assert p.line(width=30) == "[3/7] 03_reward  cell 2/14  1…" and len(p.line(width=30)) == 30


def test_the_cell_papermill_injects_is_not_counted_so_the_last_cell_is_n_of_n():
    p = StageProgress("[6/7] 04_rloo", code_cells=3, clock=Clock(), out=io.StringIO(), interactive=True)
    for cell in (Cell("markdown"), Cell("code", "parameters"), Cell("code", "injected-parameters"), Cell("code"), Cell("code")):
        p.cell_started(cell)
    assert "cell 3/3" in p.line()


def test_a_stage_far_past_its_estimate_says_so():
    clock = Clock()
    p = StageProgress("[1/1] x", code_cells=3, estimate=60, clock=clock, out=io.StringIO(), interactive=True)
    clock.now += 60 * 1.5 + 31
    assert "past its estimate" in p.line()
    first = StageProgress("[1/1] x", code_cells=3, estimate=None, clock=clock, out=io.StringIO(), interactive=True)
    clock.now += 5
    assert first.line() == "[1/1] x  cell 0/3  5.0s"  # no estimate on a first run of a profile without one


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cleared_at_the_end():
    out = io.StringIO()
    p = StageProgress("[1/2] 02_sft", code_cells=5, out=out, interactive=True, clock=Clock())
    p.tick()
    p.tick()
    p.clear()
    text = out.getvalue()
    assert text.count("\r[1/2] 02_sft") == 2 and "\n" not in text and text.endswith("\r\x1b[K")


def test_in_a_log_a_plain_line_comes_once_a_minute():
    out, clock = io.StringIO(), Clock()
    p = StageProgress("[1/2] 02_sft", code_cells=5, out=out, interactive=False, clock=clock)
    p.tick()
    assert out.getvalue() == ""
    for _ in range(3):
        clock.now += LOG_EVERY
        p.tick()
        p.tick()  # the same minute: nothing more
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("[1/2] 02_sft  cell 0/5") for line in lines)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_format_seconds():
    assert [format_seconds(s) for s in (4.26, 69, 3725)] == ["4.3s", "1m09s", "1h02m"]


def test_the_estimate_is_the_last_time_here_else_the_profiles_measured_one(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmeasured:\n  on: a 2-core laptop\n  seconds: {02_sft: 69}\nstages:\n  02_sft:\n")
    profile = load_profile(path)
    assert profile.measured_seconds == {"02_sft": 69.0}
    assert estimate_seconds(profile, "02_sft", None) == 69.0
    assert estimate_seconds(profile, "03_reward", None) is None
    record = StageRecord("02_sft", "f", {}, "c", {}, seconds=80.5)
    assert estimate_seconds(profile, "02_sft", record) == 80.5
    path.write_text("name: p\nmeasured: {02_sft: 69}\nstages:\n  02_sft:\n")
    with pytest.raises(ValueError, match="p.yaml: measured must be a mapping with seconds"):
        load_profile(path)


def test_the_pace_is_this_runs_time_over_the_profiles_for_the_long_stages_only():
    assert pace([]) is None
    assert pace([(13.2, 6.0), (40.0, None)]) is None  # a 6-second stage is its kernel's start; unmeasured ones say nothing
    assert pace([(13.2, 6.0), (573.0, 337.0), (250.0, 152.0)]) == pytest.approx((573 + 250) / (337 + 152))


def test_a_first_runs_estimate_follows_this_machines_pace_a_stage_run_here_before_keeps_its_own_time(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmeasured:\n  on: a 2-core laptop\n  seconds: {02_sft: 100}\nstages:\n  02_sft:\n")
    profile = load_profile(path)
    assert estimate_seconds(profile, "02_sft", None, factor=1.7) == pytest.approx(170.0)
    assert estimate_seconds(profile, "02_sft", StageRecord("02_sft", "f", {}, "c", {}, seconds=80.5), factor=1.7) == 80.5
    clock = Clock()
    p = StageProgress("[4/7] 04_dpo", code_cells=12, estimate=170, paced=True, clock=clock, out=io.StringIO(), interactive=True)
    clock.now += 60
    assert p.line() == "[4/7] 04_dpo  cell 0/12  1m00s of ~2m50s at this run's pace"


def test_a_first_run_adds_the_tiny_base_build_to_sfts_estimate_until_the_cache_holds_one(tmp_path):
    """The profiles' measured 02_sft times found the base cached; on a fresh clone the base is built first, so the
    estimate counts its build until a finished build with the same settings is in the cache."""
    from utils.sft.params import TINY_BASE
    from utils.sft.stage import TINY_BASE_BUILD_SECONDS, first_build

    params = {"base_model": "tiny", "tiny_base": dict(TINY_BASE), "base_cache_dir": "cache"}
    assert first_build(params, tmp_path) == ("the tiny base", TINY_BASE_BUILD_SECONDS)
    assert first_build({**params, "tiny_base": {**TINY_BASE, "steps": 600}}, tmp_path)[1] == pytest.approx(2 * TINY_BASE_BUILD_SECONDS)
    assert first_build({**params, "base_model": "HuggingFaceTB/SmolLM2-135M"}, tmp_path) is None
    build = tmp_path / "cache" / "tiny-gpt-neox-0123456789abcdef"
    build.mkdir(parents=True)
    assert first_build(params, tmp_path) is not None  # a build still under way has no report yet
    (build / "tiny_base.json").write_text(json.dumps({"config": {**TINY_BASE, "seed": 1}}))
    assert first_build(params, tmp_path) is not None  # another seed is another base
    (build / "tiny_base.json").write_text(json.dumps({"config": TINY_BASE}))
    assert first_build(params, tmp_path) is None
    assert first_build({**params, "base_cache_dir": str(tmp_path / "cache")}, Path("/nowhere")) is None  # absolute: as is


def test_the_runner_says_a_first_sft_run_builds_the_base_and_not_once_it_is_cached(tmp_path):
    import nbformat

    from recipes.run import run_profile
    from utils.sft.params import TINY_BASE

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('run_dir = ""\nout_dir = ""\nbase_cache_dir = "runs/cache"')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("import json, pathlib\n"
                                                "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'cache': base_cache_dir}))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "02_sft.ipynb")
    cache = tmp_path / "cache"
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nstages:\n  02_sft: {{base_cache_dir: {cache}}}\n")

    def logged(**kw) -> list[str]:
        logs: list[str] = []
        run_profile(load_profile(path), tmp_path / "runs", notebooks_dir=tmp_path / "notebooks", log=logs.append, **kw)
        return logs

    first = logged()
    assert any(line.startswith("[1/1] 02_sft: builds the tiny base first, once (about 3m00s on 2 cores; later runs find it in")
               for line in first), first
    (cache / "tiny-gpt-neox-0123456789abcdef").mkdir(parents=True)
    (cache / "tiny-gpt-neox-0123456789abcdef" / "tiny_base.json").write_text(json.dumps({"config": TINY_BASE}))
    again = logged(force=True)
    assert any("02_sft: running" in line for line in again) and not any("builds the tiny base" in line for line in again), again


def test_the_summary_says_when_this_machine_ran_at_another_pace_than_the_profiles():
    results = [StageResult("01_explore_trees", "ran", 13.2), StageResult("03_reward", "ran", 258.4)]
    slow = summary(results, Path("runs/smol"), 600.0, None, {"01_explore_trees": 6, "03_reward": 152})
    assert slow[-1].startswith("pace: the stages took 1.70× the times the profile measured")
    same = summary(results, Path("runs/smol"), 600.0, None, {"01_explore_trees": 6, "03_reward": 250})
    assert not any(line.startswith("pace:") for line in same)  # within 15%: nothing to explain
    # 02_sft's first run may build the tiny base or convert a GGUF (left out of the profile's times): not a pace
    built = summary([StageResult("02_sft", "ran", 270.0)], Path("runs/tiny"), 280.0, None, {"02_sft": 63})
    assert not any(line.startswith("pace:") for line in built)


def test_the_offline_profiles_carry_their_measured_times():
    for name in ("tiny", "smol"):
        measured = load_profile(name).measured_seconds
        assert set(measured) == set(load_profile(name).stages), name


def test_the_summary_gives_each_stage_its_time_and_the_report():
    lines = summary([StageResult("01_explore_trees", "skipped"), StageResult("02_sft", "ran", 69.2)], Path("runs/tiny"),
                    75.0, Path("runs/tiny/report.md"))
    assert lines[0].split() == ["01_explore_trees", "skipped", "unchanged"]
    assert lines[1].split() == ["02_sft", "ran", "1m09s"]
    assert lines[2] == "1 stage(s) ran, 1 unchanged, in 1m15s: runs/tiny"
    assert lines[3].startswith("report: runs/tiny/report.md (and report.html beside it")


# ---------------------------------------------------------------------------------------------- the machine


def test_cores_are_the_affinity_capped_by_a_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 threads, not one per core of the host
    assert machine.available_cores(tmp_path) == min(2, machine.available_cores(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.available_cores(tmp_path) == machine.available_cores(tmp_path / "none")
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert machine.available_cores(v1) == 1


def test_threads_honour_omp_num_threads_and_otherwise_fit_the_cores():
    assert machine.thread_count({"OMP_NUM_THREADS": "3"}) == 3
    assert machine.thread_count({"OMP_NUM_THREADS": "0"}) == machine.available_cores()
    assert machine.thread_count({"OMP_NUM_THREADS": "lots"}) == machine.available_cores()
    assert machine.thread_count({}) == machine.available_cores()


def test_a_busy_machine_is_named_before_a_stage_starts():
    assert machine.busy_note(cores=2, load=0.4) is None
    note = machine.busy_note(cores=2, load=2.3)
    assert note.startswith("the machine is busy before this stage starts (load 2.3 on 2 cores)")


def test_the_cpu_is_named_with_its_widest_vector_extension(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert machine.cpu_name(info) == "AMD EPYC, AVX2"
    info.write_text("model name\t: AMD EPYC 9R14\nflags\t\t: avx avx2 avx512f avx512bw\n")
    assert machine.cpu_name(info) == "AMD EPYC 9R14, AVX-512"
    assert machine.cpu_name(tmp_path / "absent") == (platform.processor() or platform.machine())


def test_running_now_counts_other_runnable_threads(tmp_path):
    proc = tmp_path / "loadavg"
    proc.write_text("2.10 1.50 1.20 4/321 12345\n")
    assert machine.running_now(samples=3, interval=0, proc=proc) == 3.0  # the reader itself is not other work
    assert machine.running_now(samples=1, interval=0, proc=tmp_path / "absent") == machine.load_average()


def test_a_record_says_where_it_ran_and_that_is_not_its_fingerprint(tmp_path):
    a = StageRecord("02_sft", "f", {}, "c", {})
    a.write(tmp_path)
    from utils.pipeline.stage_record import read_record

    back = read_record(tmp_path)
    assert back.machine["threads"] == machine.thread_count() and back.machine["cores"] == machine.available_cores()
    assert back.commit is None or len(back.commit.split("+")[0]) == 7
    assert back.fingerprint == "f"


def test_a_training_cell_prints_a_line_every_tenth_of_its_steps():
    from types import SimpleNamespace

    from utils.model.modeling import StepLines

    lines = []
    cb = StepLines("SFT", out=lambda text, flush: lines.append(text))
    state = SimpleNamespace(global_step=0, max_steps=60, log_history=[])
    cb.on_train_begin(None, state, None)
    for step in range(1, 61):
        state.global_step = step
        if step == 30:
            state.log_history.append({"loss": 4.6321, "step": 30})
        cb.on_step_end(None, state, None)
    assert [line.split(",")[0] for line in lines] == [f"SFT: step {s}/60" for s in (1, 7, 13, 19, 25, 31, 37, 43, 49, 55, 60)]
    assert lines[-1].endswith("about 0 s left, training loss 4.63") and "training loss" not in lines[0]


def test_a_long_loop_prints_what_finished_how_far_it_is_and_what_is_left_at_the_rate_so_far(monkeypatch):
    import utils.model.modeling as modeling

    clock = iter([100.0, 110.0, 140.0, 160.0])  # started, then three parts finish
    monkeypatch.setattr(modeling.time, "time", lambda: next(clock))
    lines = []
    countdown = modeling.Countdown(10, "replies", out=lines.append)
    countdown.tick("sft sampled", parts=2)  # 2 replies in 10 s: 40 s for the 8 left
    countdown.tick("dpo sampled", parts=6)  # 8 in 40 s: 10 s for the last 2
    countdown.tick("the rest", parts=2)
    assert lines == ["sft sampled (2 of 10 replies, 10 s so far, about 40 s left)",
                     "dpo sampled (8 of 10 replies, 40 s so far, about 10 s left)",
                     "the rest (10 of 10 replies, 60 s so far, about 0 s left)"]


def test_bitsandbytes_optional_kernel_line_is_dropped_and_nothing_else():
    import logging

    import utils  # noqa: F401 (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def record(message: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)

    assert not logger.filter(record("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"))
    assert logger.filter(record("a real warning from bitsandbytes"))


def test_what_the_kernel_process_writes_outside_the_notebook_goes_to_the_stages_kernel_log(tmp_path, capfd):
    import nbformat
    import papermill

    from utils.pipeline.progress import KERNEL_LOG, kernel_log_lines, register_engine

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os, sys\nprint('in the notebook')\nprint('a warning in the notebook', file=sys.stderr)"),
        nbformat.v4.new_code_cell("os.write(2, b'a C library on fd 2\\n'); os.write(1, b'and on fd 1\\n')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    source, executed, log = tmp_path / "in.ipynb", tmp_path / "out.ipynb", tmp_path / KERNEL_LOG
    nbformat.write(nb, source)
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3", engine_name=register_engine(),
                               kernel_log=str(log), progress_bar=False)
    console = capfd.readouterr()
    # The kernel process's own output is in the file, not on the runner's console; the notebook's is in the notebook.
    assert "a C library on fd 2" not in console.err + console.out and "and on fd 1" not in console.err + console.out
    assert {"a C library on fd 2", "and on fd 1"} <= set(kernel_log_lines(log))
    outputs = nbformat.read(executed, as_version=4).cells[0].outputs
    assert [o.get("text", "").strip() for o in outputs] == ["in the notebook", "a warning in the notebook"]
    # The runner's own shutdown interrupt is not worth a line; anything else is.
    log.write_text("[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\n")
    assert kernel_log_lines(log) == [] and kernel_log_lines(tmp_path / "absent.log") == []
    log.write_text("[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\nSegmentation fault\n")
    assert kernel_log_lines(log) == ["Segmentation fault"]
