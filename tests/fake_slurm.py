"""Stand-ins for sbatch and sacct on PATH, for tests of what the launcher does around a
submission (refusals, scale) where no SLURM cluster runs. submitit itself is real."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def fake_slurm(folder: Path, *, job_id: int = 4242, refuse: str = "", sacct_lines: str = "",
               scancel_refuses: str = "") -> dict[str, str]:
    """Write sbatch, sacct and scancel scripts into ``folder``; return the environment that
    puts them first on PATH. sbatch accepts every job as ``job_id`` unless ``refuse`` is
    given, which it prints to stderr before failing as sbatch does; sacct prints
    ``sacct_lines`` (its --parsable2 format without the header); scancel succeeds unless
    ``scancel_refuses`` is given, which it prints to stderr before failing."""
    folder.mkdir(parents=True, exist_ok=True)
    if refuse:
        sbatch = f"#!/bin/sh\ncat >&2 <<'END'\n{refuse}\nEND\nexit 1\n"
    else:
        sbatch = f"#!/bin/sh\necho 'Submitted batch job {job_id}'\n"
    (folder / "sacct.txt").write_text("JobID|State|NodeList\n" + sacct_lines)
    scancel = f"#!/bin/sh\ncat >&2 <<'END'\n{scancel_refuses}\nEND\nexit 1\n" if scancel_refuses else "#!/bin/sh\n"
    scripts = {"sbatch": sbatch, "sacct": f"#!/bin/sh\ncat '{folder / 'sacct.txt'}'\n", "scancel": scancel}
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}
