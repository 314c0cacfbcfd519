"""How warnings and the runner's notes reach people: "invbench: warning: ..." and
"invbench: note: RUN: ..." on one line, once per message.

Without this, Python prints a warning with its source file and line, and a sweep repeats
one warning per run: per hyperparameter draw and trial in the launcher, per run in every
worker process. Worker processes forward their warnings to the launcher
(``forward_warnings``), which shows each once with the rest (``show_warnings_once``).

The runner logs what it did to a run's files (a broken file set aside, a restart and why)
and, marked ``Progress``, how far a run got. `invbench run` shows both; a sweep shows the
notes alone (``Notes``), forwarded by local workers like their warnings.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable, TextIO


def show_warnings_once(file=None) -> None:
    """Show each warning message once, as one line without source lines, on ``file`` (stderr)."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file_=None, line=None):
        text = str(message)
        if text not in shown:
            shown.add(text)
            print(f"invbench: warning: {text}", file=file_ or file or sys.stderr, flush=True)

    warnings.showwarning = show


def forward_warnings(send: Callable[[str], None]) -> None:
    """In a worker process: hand each warning's text to ``send`` instead of printing it."""
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: send(str(message))


def show(text: str) -> None:
    """Show a forwarded warning the way this process shows its own."""
    warnings.showwarning(text, UserWarning, "", 0)


class Progress(str):
    """A log line of the runner that only follows a run's progress (starting, resuming,
    step i/n): a sweep leaves it out, where it would repeat for every run."""


def is_note(message: str) -> bool:
    """Whether a runner's log line is worth a sweep's output (anything but progress)."""
    return not isinstance(message, Progress)


class Notes:
    """Shows the runner's notes of a sweep's runs on ``file`` (stderr), each once, as
    "invbench: note: RUN: message" (a message that names its run already keeps its words)."""

    def __init__(self, file: TextIO | None = None, before: str = ""):
        self.file, self.before = file, before  # ``before``: "\n" to leave a progress bar's line
        self.shown: set[str] = set()

    def show(self, run_name: str, message: str) -> None:
        text = message if run_name in message else f"{run_name}: {message}"
        if text not in self.shown:
            self.shown.add(text)
            print(f"{self.before}invbench: note: {text}", file=self.file or sys.stderr, flush=True)

    def log(self, run_name: str) -> Callable[[str], None]:
        """A runner log callback for one run that shows its notes and drops its progress."""
        return lambda message: self.show(run_name, message) if is_note(message) else None
