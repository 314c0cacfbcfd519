"""How warnings reach people: "invbench: warning: ..." on one line, once per message.

Without this, Python prints a warning with its source file and line, and a sweep repeats
one warning per run: per hyperparameter draw and trial in the launcher, per run in every
worker process. Worker processes forward their warnings to the launcher
(``forward_warnings``), which shows each once with the rest (``show_warnings_once``).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable


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
