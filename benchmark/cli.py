"""The ``invbench`` command line. Exit codes: 0 success, 2 usage or input error, 1 a run failed
(or a regression), 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import argparse
import importlib
import sys

from invbench.errors import InvbenchError
from invbench.warn import show_warnings_once

# Each module adds its subcommands with register(subparsers) and sets func on them.
COMMAND_MODULES = ("listing", "run", "sweep", "collect", "compare", "reproduce", "demo")

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def installed_version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("invbench")
    except metadata.PackageNotFoundError:
        from invbench import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invbench",
        description="Benchmark invariance-learning methods: does a method find the invariant signal, or the spurious one?",
    )
    parser.add_argument("--version", action="version", version=f"invbench {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"invbench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"invbench.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_warnings_once()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # no traceback: what was interrupted is resumable (`invbench sweep launch` resumes it)
        print("\ninvbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InvbenchError as exc:
        print(f"invbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        # A failed run can only come from a command that imported the runner: looked up, not
        # imported here, so that `collect` and `sweep status` start without torch.
        runner = sys.modules.get("invbench.runner")
        if runner is None or not isinstance(exc, runner.RunFailedError):
            raise
        print(f"invbench: {exc}", file=sys.stderr)
        # bad input found only once the run started is still the user's input error;
        # error.json keeps the details
        return EXIT_USAGE if isinstance(exc.__cause__, InvbenchError) else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
