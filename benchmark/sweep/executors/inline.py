"""The inline executor: runs the packs one after another in this process (for debugging:
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

    def threads(self) -> int:
        import torch

        return self.settings.threads or torch.get_num_threads()

    def submit(self, packs: Sequence[Sequence[Any]]) -> list[str]:
        import torch

        from invbench.runner import run_pack

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        specs = [spec for pack in packs for spec in pack]
        with LauncherLock(self.out_root) as lock:
            write_launches([(self.out_root / spec.dirname, lock.job_id) for spec in specs], self.kind,
                           **lock.launch_fields())
            progress = Progress(len(specs), 1)
            notes = Notes(before="\n" if progress.tty else "")  # what the runner did to a run's files
            done = failed = 0
            for pack in packs:
                progress.update(done, failed, len(pack))
                start = time.monotonic()
                outcomes = run_pack(pack, self.out_root, job_id=lock.job_id,
                                    log=lambda spec, message: notes.log(spec.dirname)(message))
                per_run = (time.monotonic() - start) / len(pack)  # the pack's time, shared by its runs
                for outcome in outcomes:
                    if outcome.status == "done":
                        done += 1
                        progress.wall_times.append(per_run)
                    elif outcome.status == "failed":
                        failed += 1
                        print(f"\n{outcome.message}", file=sys.stderr)
                    else:  # busy: another process trains it
                        print(f"\n{outcome.message}; left to it", file=sys.stderr)
            progress.update(done, failed, 0)
            progress.close()
        return [lock.job_id]
