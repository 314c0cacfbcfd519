"""The inline executor: runs the specs one after another in this process (for debugging:
breakpoints and tracebacks work as usual)."""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from invbench.sweep.executors.base import InProcessExecutor, LauncherLock
from invbench.sweep.progress import Progress
from invbench.sweep.launches import write_launches
from invbench.warn import Notes


class InlineExecutor(InProcessExecutor):
    kind = "inline"

    def submit(self, specs: Sequence[Any]) -> list[str]:
        import torch

        from invbench.rundir import RunBusyError

        from invbench.runner import RunFailedError, run

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        with LauncherLock(self.out_root) as lock:
            write_launches([(self.out_root / spec.dirname, lock.job_id) for spec in specs], self.kind,
                           **lock.launch_fields())
            progress = Progress(len(specs), 1)
            notes = Notes(before="\n" if progress.tty else "")  # what the runner did to a run's files
            done = failed = 0
            for spec in specs:
                progress.update(done, failed, 1)
                start = time.monotonic()
                try:
                    run(spec, self.out_root, job_id=lock.job_id, log=notes.log(spec.dirname))
                    done += 1
                    progress.wall_times.append(time.monotonic() - start)
                except RunFailedError as exc:
                    failed += 1
                    print(f"\n{exc}", file=sys.stderr)
                except RunBusyError as exc:
                    print(f"\n{exc}; left to it", file=sys.stderr)
                except Exception as exc:  # e.g. its directory holds another run: that run alone fails
                    failed += 1
                    print(f"\nrun {spec.dirname} could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
            progress.update(done, failed, 0)
            progress.close()
        return [lock.job_id]
