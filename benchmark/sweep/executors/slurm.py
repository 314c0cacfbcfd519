"""The SLURM executor: one submitit job array per launch.

Each array task trains whole packs (invbench.packing), one after another: consecutive
packs share a task while together they hold at most ``runs_per_task`` runs, and a pack
larger than that has a task of its own (with ``pack_size`` 1, ``runs_per_task`` runs
share a task, as before packs). So the default (``runs_per_task`` 1) is one array task per
pack. On pre-emption or the time limit, SLURM signals the task; submitit calls
``RunTask.checkpoint``, which hands back the same task, and requeues it; the requeued task
skips finished runs and resumes the interrupted ones from their last checkpoint.pt (the
runner drops records after the saved step, so none repeats and none is missing).
Job states come from sacct (submitit's parser): accounting must be enabled.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from invbench.errors import ConfigError, SubmissionError
from invbench.sweep.executors.base import CancelError, Executor
from invbench.sweep.launches import JobState, job_order, write_launches

SUBMITIT_FOLDER = ".submitit"
PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED",
           "STAGE_OUT"}
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING"}
# Gone without being the run's fault: the run is stale and `launch` starts it again.
CANCELLED = {"CANCELLED", "PREEMPTED", "COMPLETED"}


class RunTask:
    """The callable of one array task: its packs (lists of specs), trained in order with
    invbench.runner.run_pack."""

    def __init__(self, packs: Sequence[Sequence[Any]], out_root: str, threads: int):
        # plain data: pickles across versions
        self.packs = [[spec.to_dict() for spec in pack] for pack in packs]
        self.out_root = out_root
        self.threads = threads

    def __call__(self) -> list[str]:
        import torch

        from invbench.runner import run_pack
        from invbench.spec import RunSpec
        from invbench.warn import show_warnings_once

        show_warnings_once()  # one line per message in the task's log, not one per run
        torch.set_num_threads(self.threads)
        job_id = job_environment_id()
        failures, finished = [], []
        for pack in self.packs:
            for outcome in run_pack([RunSpec.from_dict(data) for data in pack], self.out_root, job_id=job_id,
                                    log=lambda spec, message: _log(message)):
                if outcome.status == "done":
                    finished.append(str(outcome.run_dir))
                elif outcome.status == "failed":
                    failures.append(outcome.message)
        if failures:
            runs = sum(map(len, self.packs))
            raise RuntimeError(f"{len(failures)} of {runs} run(s) failed:\n" + "\n".join(failures))
        return finished

    def checkpoint(self) -> Any:
        """Called by submitit on pre-emption or timeout: requeue this task as it is. The
        runner's checkpoint.pt (written at every evaluation) holds the training state."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def job_environment_id() -> str | None:
    """This SLURM job's id as sacct names it ("123_4" for an array task), from submitit's job
    environment; None outside a submitit job."""
    import submitit

    try:
        return submitit.JobEnvironment().job_id
    except (RuntimeError, KeyError):
        return None


def _log(message: str) -> None:
    print(message, flush=True)  # into the task's submitit log (OUT/.submitit/JOBID_0_log.out)


def task_packs(packs: Sequence[Sequence[Any]], runs_per_task: int) -> list[list[Sequence[Any]]]:
    """Consecutive packs grouped into array tasks of at most ``runs_per_task`` runs; a pack
    larger than that is a task of its own."""
    tasks: list[list[Sequence[Any]]] = []
    held = runs_per_task  # runs in the last task: full, so the first pack opens a task
    for pack in packs:
        if held + len(pack) > runs_per_task:
            tasks.append([])
            held = 0
        tasks[-1].append(pack)
        held += len(pack)
    return tasks


class SlurmExecutor(Executor):
    kind = "slurm"

    @property
    def folder(self) -> Path:
        return self.out_root / SUBMITIT_FOLDER

    def check(self) -> None:
        for binary in ("sbatch", "sacct"):
            if shutil.which(binary) is None:
                raise ConfigError(f"the slurm executor needs {binary} on PATH (is this a SLURM login node?); "
                                  "use --executor local to run here")
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("the slurm executor needs submitit: pip install submitit") from None

    def parameters(self, threads: int) -> dict[str, Any]:
        s = self.settings.slurm
        params: dict[str, Any] = {
            "timeout_min": s.time_min,
            "cpus_per_task": s.cpus_per_task,
            "gpus_per_node": s.gpus_per_node,
            "slurm_array_parallelism": s.array_parallelism,
            "slurm_signal_delay_s": s.signal_delay_s,
            "name": s.job_name or f"invbench-{self.sweep_name}",
            "slurm_setup": list(s.setup),
            "slurm_additional_parameters": dict(s.additional),
        }
        for key in ("partition", "account", "qos"):
            if getattr(s, key):
                params[f"slurm_{key}"] = getattr(s, key)
        if s.mem_gb is not None:
            params["mem_gb"] = s.mem_gb
        return params

    def workers(self) -> int:
        return self.settings.slurm.array_parallelism

    def threads(self) -> int:
        return self.settings.threads or self.settings.slurm.cpus_per_task

    def memory_per_worker(self, device: str) -> int:
        """Each task has memory of its own: mem_gb when it is set (CPU runs), else what
        this machine has available (a compute node is taken to have as much)."""
        from invbench.packing import available_memory_bytes

        mem_gb = self.settings.slurm.mem_gb
        if mem_gb is not None and not device.startswith("cuda"):
            return int(mem_gb * 2 ** 30)
        return available_memory_bytes(device)

    def tasks(self, packs: Sequence[Sequence[Any]]) -> list[list[Sequence[Any]]]:
        """The packs of each array task."""
        return task_packs(packs, self.settings.runs_per_task)

    def submit(self, packs: Sequence[Sequence[Any]]) -> list[str]:
        import submitit

        specs = [spec for pack in packs for spec in pack]
        if not specs:
            return []
        threads = self.threads()
        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        executor.update_parameters(**self.parameters(threads))
        grouped = self.tasks(packs)
        tasks = [RunTask(task, str(self.out_root.resolve()), threads) for task in grouped]
        # submitit prints sbatch's complaint itself before raising: it goes into our one line
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed), executor.batch():
                jobs = [executor.submit(task) for task in tasks]
        except Exception as exc:  # sbatch refused the array: nothing was submitted
            said = " ".join(str(exc).split()) or " ".join(printed.getvalue().split()) or type(exc).__name__
            raise SubmissionError(f"sbatch refused the job array of {len(specs)} run(s), nothing was submitted: "
                                  f"{said}") from None
        write_launches([(self.out_root / spec.dirname, str(job.job_id)) for job, task in zip(jobs, grouped)
                        for pack in task for spec in pack], self.kind, folder=str(self.folder))
        return [str(job.job_id) for job in jobs]

    @classmethod
    def job_states(cls, launches: Sequence[dict]) -> dict[str, JobState]:
        ids = sorted({str(launch["job_id"]) for launch in launches})
        folders = {str(launch["job_id"]): launch.get("folder") for launch in launches}
        info = sacct(ids)
        out = {}
        for job_id in ids:
            state = (info.get(job_id, {}).get("State") or "UNKNOWN").split()[0].rstrip("+")
            if state in PENDING:
                out[job_id] = JobState(alive=True)
            elif state in RUNNING:
                out[job_id] = JobState(alive=True, running=True)
            elif state in CANCELLED or state == "UNKNOWN":
                what = "unknown to sacct" if state == "UNKNOWN" else state
                out[job_id] = JobState(alive=False, reason=f"SLURM job {job_id} {what}")
            else:  # FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL, DEADLINE
                out[job_id] = JobState(alive=False, failed=True, reason=f"SLURM job {job_id} ended {state}",
                                       tail=_log_tail(folders.get(job_id), job_id))
        return out

    @classmethod
    def cancel(cls, launches: Sequence[dict]) -> list[str]:
        ids = sorted({str(launch["job_id"]) for launch in launches}, key=job_order)
        if not ids:
            return []
        try:
            subprocess.run(["scancel", *ids], check=True, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise CancelError(f"cannot cancel SLURM job(s) {', '.join(ids)}: scancel is not on PATH "
                              "(is this a SLURM login node?)") from None
        except subprocess.CalledProcessError as exc:
            said = " ".join((exc.stderr or exc.stdout or "").split()) or f"exit code {exc.returncode}"
            raise CancelError(f"scancel could not cancel SLURM job(s) {', '.join(ids)}: {said}") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CancelError(f"scancel could not cancel SLURM job(s) {', '.join(ids)}: {exc}") from None
        return [f"scancel {job_id}" for job_id in ids]


def sacct(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """sacct's view of the jobs (array tasks expanded), keyed by job id like '123_4'."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    if not job_ids:
        return {}
    command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for main in sorted({job_id.split("_")[0] for job_id in job_ids}):
        command += ["-j", main]
    try:
        output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot read job states from sacct ({exc}); is SLURM accounting reachable?") from None
    return SlurmInfoWatcher().read_info(output)


def _log_tail(folder: str | None, job_id: str, lines: int = 6) -> str:
    if not folder:
        return ""
    path = Path(folder) / f"{job_id}_0_log.err"
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])
