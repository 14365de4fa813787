"""What `search run` shows while it runs: the study's counts and each running trial's epoch.

On a terminal, a live block redrawn in place (the study's line, then a line per running
trial); elsewhere (a log file, a pipe, CI) plain lines, one each time a trial finishes an
epoch or the study's counts change. Everything comes from the storage (the trials' history
written after every epoch), so it shows workers on other machines too.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.budget import Progress
from search.ranking import best_value
from search.record import TrialRecord


def epochs_text(trial: FrozenTrial, max_epochs: int | None) -> str:
    """A trial's epochs so far and of how many: "3/10" (planned, else max_epochs)."""
    record = TrialRecord.of(trial)
    done = record.epochs_done
    planned = record.planned_epochs if record.planned_epochs is not None else max_epochs
    return f"{done}/{planned}" if planned else str(done)


def trial_line(trial: FrozenTrial, metric: str, direction: str, max_epochs: int) -> str:
    """A running trial: its epoch (n of planned), last and best value, seconds per epoch."""
    record = TrialRecord.of(trial)
    values = [v for v in record.history.get(metric, []) if math.isfinite(v)]
    seconds = record.epoch_seconds
    text = f"trial {trial.number}: epoch {epochs_text(trial, max_epochs)}"
    if values:
        text += f" {metric} {values[-1]:.4f} (best {best_value(values, direction):.4f})"
    if seconds:
        text += f", {seconds[-1]:.0f} s/epoch"
    else:
        text += ", first epoch running"
    return text


def time_left(deadline: float | None) -> str | None:
    """The time left before the deadline as "m:ss left" (None: no deadline)."""
    if deadline is None:
        return None
    left = max(0, round(deadline - time.time()))
    return f"{left // 60}:{left % 60:02d} left"


class Display:
    """Where the supervisor's progress goes: a live block on a terminal, else plain lines.

    `quiet` shows nothing but what `final` prints.
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.live = not quiet and self.stream.isatty()
        self._drawn = 0  # lines of the live block on screen
        self._seen: dict[int, int] = {}  # trial number -> epochs already printed
        self.shown: set[int] = set()  # running trials shown, whose end is still to tell
        self._last_study_line = ""

    def event(self, line: str) -> None:
        """A line that stays (a worker restarted, the time limit reached)."""
        if self.quiet:
            return
        self._clear()
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.stream, flush=True)

    def update(
        self,
        study_line: str,
        left: str | None,
        trial_lines: dict[int, str],
        epochs: dict[int, int],
    ) -> None:
        """The study's line, the time left, its running trials' lines and epochs trained."""
        if self.quiet:
            return
        full = study_line if left is None else f"{study_line} | {left}"
        if self.live:
            self._clear()
            width = shutil.get_terminal_size().columns
            lines = [f"[{time.strftime('%H:%M:%S')}] {full}"]
            lines += [f"  {line}" for line in trial_lines.values()]
            # Cut to the terminal's width: a wrapped line would break the redraw.
            text = "\n".join(line[: width - 1] for line in lines)
            print(text, file=self.stream, flush=True)
            self._drawn = len(lines)
            return
        for number, line in trial_lines.items():
            if epochs[number] > self._seen.get(number, 0):
                self._seen[number] = epochs[number]
                print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.stream, flush=True)
        # A new count or best makes a new line; the time left alone does not.
        if study_line != self._last_study_line:
            self._last_study_line = study_line
            print(f"[{time.strftime('%H:%M:%S')}] {full}", file=self.stream, flush=True)

    def final(self, line: str) -> None:
        """The last line, shown even when quiet."""
        self._clear()
        print(line, file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            # Up to the block's first line, then erase to the end of the screen.
            print(f"\x1b[{self._drawn}F\x1b[J", end="", file=self.stream, flush=True)
            self._drawn = 0


def show(
    display: Display,
    study: optuna.Study,
    state: Progress,
    *,
    n_trials: int,
    metric: str,
    direction: str,
    max_epochs: int,
    deadline: float | None,
) -> None:
    """Read the study's running trials and show them with its line; say how those shown
    before ended."""
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if t.number in display.shown and t.state != TrialState.RUNNING:
            display.shown.discard(t.number)
            display.event(ended_line(t, metric, max_epochs))
    lines = {t.number: trial_line(t, metric, direction, max_epochs) for t in running}
    epochs = {t.number: TrialRecord.of(t).epochs_done for t in running}
    display.shown |= set(lines)
    display.update(state.line(n_trials, metric), time_left(deadline), lines, epochs)


def ended_line(trial: FrozenTrial, metric: str, max_epochs: int) -> str:
    """How a trial ended: its state, value and epochs, and the reason where there is one."""
    record = TrialRecord.of(trial)
    text = f"trial {trial.number} {trial.state.name.lower()}"
    if trial.value is not None:
        text += f": {metric} {trial.value:.4f}"
        if record.best_epoch is not None:
            text += f" at epoch {record.best_epoch}"
    text += f" after {epochs_text(trial, max_epochs)} epochs"
    reason = record.stopped_at_deadline and "stopped at the deadline"
    reason = reason or record.pruned_reason or record.fail_reason
    return f"{text} ({reason})" if reason else text


class NotebookDisplay(Display):
    """A live block in a Jupyter notebook: one output area redrawn in place (IPython's
    display handle); lines that stay are printed as usual."""

    def __init__(self, *, quiet: bool = False) -> None:
        super().__init__(sys.stdout, quiet=quiet)
        self.live = not quiet
        self._handle: Any = None

    def update(
        self,
        study_line: str,
        left: str | None,
        trial_lines: dict[int, str],
        epochs: dict[int, int],
    ) -> None:
        if self.quiet:
            return
        from IPython.display import Pretty, display

        full = study_line if left is None else f"{study_line} | {left}"
        lines = [f"[{time.strftime('%H:%M:%S')}] {full}"]
        lines += [f"  {line}" for line in trial_lines.values()]
        block = Pretty("\n".join(lines))
        if self._handle is None:
            self._handle = display(block, display_id=True)
        else:
            self._handle.update(block)

    def _clear(self) -> None:
        pass


def notebook_display(*, quiet: bool = False) -> Display | None:
    """A `NotebookDisplay` when this process is a Jupyter kernel, else None."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    kernel = get() if get is not None else None
    if kernel is None or type(kernel).__name__ != "ZMQInteractiveShell":
        return None
    return NotebookDisplay(quiet=quiet)
