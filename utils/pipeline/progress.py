"""What the runner shows while a stage's notebook runs: one line, the stage's cell, its time and what it printed last.

A stage runs for seconds to most of an hour; a silent console looks like a hang. While papermill executes a
notebook, :class:`StageProgress` follows it through two hooks of papermill's own (the cell that starts, the
text the notebook prints) and shows one line::

    [3/7] 03_reward  cell 9/14  1m12s of ~2m35s  | epoch 1.0  eval accuracy 0.61

On a terminal the line is redrawn in place every second; in a log (output not a terminal) a plain line is
written once a minute, so a CI log holds a few lines per long stage. The estimate is the stage's last time in
this run folder or, for a first run, the profile's measured time (``measured:`` in the profile), scaled by this run's
:func:`pace` once a long stage has finished: a laptop twice as slow as the machine that measured the profile sees
estimates twice as long from then on (the runner leaves 02_sft out of the pace: its first run may build or convert
the base model, which the profiles' times do not include; where it will build the tiny base, it adds the build's time to
02_sft's estimate and says so). When the stage runs well past its estimate on a busy machine,
the line says so.

The kernel talks to papermill over local IPC sockets (Linux), not TCP: nothing listens on the network, and the
kernel has no cause to warn that "Kernel is running over TCP without encryption" at every stage. What the kernel
*process* writes outside the notebook (its own log, a C library's messages) goes to the stage's ``kernel.log``,
not the console: the notebook's own output and warnings are in the executed notebook, and jupyter_client's
shutdown, which interrupts the kernel first, can make it log "KeyboardInterrupt caught in kernel" when the signal
lands inside a message handler. The runner keeps the file only when it holds more than that line.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO

from utils.pipeline.machine import available_cores, load_average

ENGINE = "kit"  # papermill engine name: nbclient with the hooks below
KERNEL_LOG = "kernel.log"  # in the stage's folder: what the kernel process wrote outside the notebook
SHUTDOWN_CHATTER = ("KeyboardInterrupt caught in kernel",)  # the runner's own shutdown interrupt, nothing else
LOG_EVERY = 60.0  # seconds between plain progress lines when the output is not a terminal
REDRAW_EVERY = 1.0
PACE_MIN_SECONDS = 60.0  # a stage measured shorter is mostly its kernel's start: it says little about the machine


def pace(stages: Iterable[tuple[float, float | None]]) -> float | None:
    """This machine's speed against the profile's: the seconds the finished stages took over the seconds the profile
    measured for them (``(took, measured)`` pairs; stages measured under a minute, or not at all, left out). None
    until one counts. 2.0: this machine takes twice as long."""
    counted = [(took, measured) for took, measured in stages if measured and measured >= PACE_MIN_SECONDS]
    return sum(t for t, _ in counted) / sum(m for _, m in counted) if counted else None


def format_seconds(s: float) -> str:
    s = max(0.0, s)
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


@dataclass
class StageProgress:
    """The state of one running stage, and the line that shows it."""

    head: str  # "[3/7] 03_reward"
    code_cells: int
    estimate: float | None = None  # seconds
    paced: bool = False  # the estimate is the profile's scaled by this run's pace (shown as such)
    started: float | None = None  # the clock's time when the stage started (default: now)
    cell: int = 0  # 1-based index among code cells of the cell now running
    last_output: str = ""
    out: TextIO = field(default_factory=lambda: sys.stderr)
    interactive: bool | None = None  # redraw in place (a terminal) or write plain lines (a log)
    clock: Callable[[], float] = time.time
    _last_logged: float = 0.0
    _shown: bool = False

    def __post_init__(self) -> None:
        if self.interactive is None:
            self.interactive = bool(getattr(self.out, "isatty", lambda: False)())
        self.started = self.clock() if self.started is None else self.started
        self._last_logged = self.clock()

    # ---- fed by papermill -------------------------------------------------------------------------------------
    def cell_started(self, cell: Any) -> None:
        # papermill's injected parameters cell is not one of the notebook's code cells: counted, the last would be "10/9"
        injected = "injected-parameters" in getattr(cell, "metadata", {}).get("tags", [])
        if getattr(cell, "cell_type", None) == "code" and not injected:
            self.cell += 1

    def write(self, text: str) -> int:
        """The notebook's stdout (papermill's ``stdout_file``): keep its last line, as a progress bar would end."""
        for line in reversed(text.replace("\r", "\n").splitlines()):
            if line.strip():
                self.last_output = " ".join(line.split())
                break
        return len(text)

    def flush(self) -> None:
        pass

    # ---- shown -----------------------------------------------------------------------------------------------
    def line(self, width: int | None = None) -> str:
        elapsed = self.clock() - self.started
        parts = [self.head, f"cell {self.cell}/{self.code_cells}"]
        if self.estimate:
            parts.append(f"{format_seconds(elapsed)} of ~{format_seconds(self.estimate)}" + (" at this run's pace" if self.paced else ""))
            if elapsed > 1.5 * self.estimate + 30:
                load, cores = load_average(), available_cores()
                busy = load is not None and load > cores + 0.5
                parts.append(f"past its estimate (load {load:.1f} on {cores} cores: the machine is shared)" if busy
                             else "past its estimate")
        else:
            parts.append(format_seconds(elapsed))
        text = "  ".join(parts) + (f"  | {self.last_output}" if self.last_output else "")
        if width and len(text) > width:
            text = text[: width - 1] + "…"
        return text

    def tick(self) -> None:
        """Redraw (terminal) or, once a minute, log the line."""
        if self.interactive:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.out.write("\r" + self.line(width) + "\x1b[K")
            self.out.flush()
            self._shown = True
        elif self.clock() - self._last_logged >= LOG_EVERY:
            self._last_logged = self.clock()
            self.out.write(self.line() + "\n")
            self.out.flush()

    def clear(self) -> None:
        """Remove the in-place line before the runner writes its own."""
        if self.interactive and self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._shown = False


class Ticker:
    """Calls ``progress.tick()`` every second on a background thread while the stage runs (``with Ticker(p):``)."""

    def __init__(self, progress: StageProgress, every: float = REDRAW_EVERY):
        self.progress, self.every = progress, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.progress.tick()

    def __enter__(self) -> StageProgress:
        self._thread.start()
        return self.progress

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.progress.clear()


def kernel_config() -> Any:
    """nbclient's configuration for the kernels the runner starts: IPC transport where the system has it."""
    from traitlets.config import Config

    config = Config()
    if sys.platform.startswith("linux"):  # macOS caps a socket path at 104 bytes, which a runtime dir can exceed
        config.KernelManager.transport = "ipc"
    return config


def kernel_manager_class() -> type:
    """jupyter_client's kernel manager, with the kernel process's stdout and stderr in the file ``kernel_log`` names
    (a traitlet, set through the config) instead of the runner's console."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class KitKernelManager(AsyncKernelManager):
        kernel_log = Unicode("", config=True, help="file for the kernel process's own output ('': the console)")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if not self.kernel_log:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(self.kernel_log, "ab") as log:  # the kernel keeps its own copy of the descriptor
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": log, "stderr": log})

    return KitKernelManager


def kernel_log_lines(path) -> list[str]:
    """The lines of a stage's kernel log that say something: the runner's shutdown chatter left out."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line for line in text.splitlines() if line.strip() and not any(c in line for c in SHUTDOWN_CHATTER)]


def register_engine() -> str:
    """papermill's nbclient engine, with a ``stage_progress`` keyword that follows each cell; returns its name."""
    from papermill.engines import NBClientEngine, papermill_engines

    class KitEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            progress: StageProgress | None = kwargs.pop("stage_progress", None)
            kernel_log: str | None = kwargs.pop("kernel_log", None)
            kwargs.setdefault("config", kernel_config())
            if kernel_log:
                kwargs["config"].KitKernelManager.kernel_log = str(kernel_log)
                kwargs["kernel_manager_class"] = kernel_manager_class()
            if progress is not None:
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    progress.cell_started(cell)
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
                kwargs["stdout_file"] = progress
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, KitEngine)
    return ENGINE
