"""The local executor: a pool of worker processes on this machine.

Workers are spawned (no forked torch state), each with ``threads`` torch threads, and take
one pack at a time from a queue (invbench.runner.run_pack trains it), reporting each of its
runs on its own: one failing run never stops the others, and progress, notes, failures
and busy runs are counted per run. A worker dies
with its launcher (Linux's PR_SET_PDEATHSIG): after a SIGKILL of the launcher nothing keeps
training unseen, the runs' locks are released by the kernel, their state reads "stale",
and the next launch resumes each from its checkpoint. Ctrl-C stops the workers the same
way (SIGTERM, not an exception), so an interrupted run is stale, never "failed".
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from typing import Any, Sequence

from invbench.sweep.executors.base import InProcessExecutor, LauncherLock
from invbench.sweep.progress import Progress
from invbench.sweep.launches import write_launches
from invbench.warn import Notes, forward_warnings, is_note, show as show_warning

PR_SET_PDEATHSIG = 1


def default_workers(settings: Any) -> int:
    return settings.workers or os.cpu_count() or 1


def default_threads(settings: Any) -> int:
    return settings.threads or max(1, (os.cpu_count() or 1) // default_workers(settings))


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the orphan finishes its run, then its queue is gone
        pass
    if os.getppid() != parent_pid:  # the launcher died before prctl took effect
        os._exit(1)


def _start_quiet_resource_tracker() -> None:
    """multiprocessing's resource tracker unlinks the queues' semaphores when the launcher dies
    without doing so itself (SIGKILL, `sweep cancel`'s SIGTERM), and then warns of "leaked
    semaphore objects": nothing is leaked, and a kill is how a sweep is stopped. The tracker
    takes its -W options from sys.warnoptions when it starts: start it with that warning off."""
    from multiprocessing import resource_tracker

    option = "ignore:resource_tracker:UserWarning"
    sys.warnoptions.append(option)
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions.remove(option)


def _worker(tasks: Any, results: Any, out_root: str, threads: int, job_id: str, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides what Ctrl-C does
    # warnings go to the launcher, which shows each once (not once per worker, with source lines)
    forward_warnings(lambda text: results.put(("warning", -1, 0.0, text)))
    import torch

    from invbench.runner import run_pack

    torch.set_num_threads(threads)
    while True:
        pack = tasks.get()  # [(spec index, spec), ...]
        if pack is None:
            return
        index_of = {spec.run_id: index for index, spec in pack}
        for index, _ in pack:
            results.put(("start", index, os.getpid(), ""))
        start = time.monotonic()

        def note(spec: Any, message: str) -> None:
            # the runner's notes (a broken file set aside, a restart) go to the launcher too
            if is_note(message):
                results.put(("note", index_of[spec.run_id], 0.0, str(message)))

        outcomes = run_pack([spec for _, spec in pack], out_root, job_id=job_id, log=note)
        per_run = (time.monotonic() - start) / len(pack)  # the pack's time, shared by its runs
        for (index, _), outcome in zip(pack, outcomes):
            results.put((outcome.status, index, per_run if outcome.status == "done" else 0.0, outcome.message))


class LocalExecutor(InProcessExecutor):
    kind = "local"

    def workers(self) -> int:
        return default_workers(self.settings)

    def threads(self) -> int:
        return default_threads(self.settings)

    def submit(self, packs: Sequence[Sequence[Any]]) -> list[str]:
        specs = [spec for pack in packs for spec in pack]
        if not specs:
            return []
        n_workers = min(default_workers(self.settings), len(packs))
        threads = default_threads(self.settings)
        ctx = mp.get_context("spawn")
        _start_quiet_resource_tracker()
        tasks, results = ctx.Queue(), ctx.Queue()
        with LauncherLock(self.out_root) as lock:
            write_launches([(self.out_root / spec.dirname, lock.job_id) for spec in specs], self.kind,
                           **lock.launch_fields())
            indices = iter(range(len(specs)))  # a run's index among the specs, in pack order
            for pack in packs:
                tasks.put([(next(indices), spec) for spec in pack])
            in_packs = f" in {len(packs)} pack(s)" if len(packs) < len(specs) else ""
            print(f"local: {len(specs)} run(s){in_packs} on {n_workers} worker(s) x {threads} torch thread(s)",
                  file=sys.stderr)
            workers: dict[int, Any] = {}

            def start_worker() -> None:
                tasks.put(None)  # one stop marker per worker, after the specs
                proc = ctx.Process(target=_worker, args=(tasks, results, str(self.out_root), threads,
                                                         lock.job_id, os.getpid()), daemon=True)
                proc.start()
                workers[proc.pid] = proc

            for _ in range(n_workers):
                start_worker()
            progress = Progress(len(specs), n_workers)
            notes = Notes(before="\n" if progress.tty else "")
            running: dict[int, int] = {}  # spec index -> worker pid
            done = failed = 0
            finished: set[int] = set()
            try:
                while len(finished) < len(specs):
                    progress.update(done, failed, len(running))
                    try:
                        messages = [results.get(timeout=1.0)]
                    except queue.Empty:
                        self._reap_dead(workers, running, finished, start_worker, specs)
                        if not workers:
                            break
                        continue
                    time.sleep(0.05)  # a finished run's worker starts its next one at once: count both
                    while True:
                        try:
                            messages.append(results.get_nowait())
                        except queue.Empty:
                            break
                    for kind, index, value, message in messages:
                        if kind == "warning":
                            show_warning(message)
                            continue
                        if kind == "note":
                            notes.show(specs[index].dirname, message)
                            continue
                        if kind == "start":
                            running[index] = value
                            continue
                        running.pop(index, None)
                        finished.add(index)
                        if kind == "done":
                            done += 1
                            progress.wall_times.append(value)
                        elif kind == "failed":
                            failed += 1
                            print(f"\n{message}" if progress.tty else message, file=sys.stderr)
                        else:  # busy: another process trains it; it is not ours to count
                            print(f"\n{message}; left to it" if progress.tty else f"{message}; left to it",
                                  file=sys.stderr)
                progress.update(done, failed, len(running))
                progress.close()
            except KeyboardInterrupt:
                print("\ninterrupted: stopping the workers; `invbench sweep launch` resumes the runs",
                      file=sys.stderr)
                raise
            finally:
                for proc in workers.values():
                    if proc.is_alive():
                        proc.terminate()
                for proc in workers.values():
                    proc.join(timeout=10)
        return [lock.job_id]

    @staticmethod
    def _reap_dead(workers: dict, running: dict, finished: set, start_worker, specs) -> int:
        """A worker killed from outside (OOM killer) loses its run: report it and replace the worker."""
        lost = 0
        for pid, proc in list(workers.items()):
            if proc.is_alive():
                continue
            del workers[pid]
            orphans = [index for index, worker in running.items() if worker == pid]
            for index in orphans:
                running.pop(index)
                finished.add(index)
                lost += 1
                print(f"worker {pid} died (exit code {proc.exitcode}) while running {specs[index].dirname}; "
                      "it is stale: `invbench sweep launch` resumes it", file=sys.stderr)
            if proc.exitcode != 0:
                start_worker()
        return lost
