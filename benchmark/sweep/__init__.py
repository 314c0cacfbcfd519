"""The sweep launcher: a TOML sweep file, expanded into run specs, run by an executor.

schema.py     the sweep file's keys, each declared once with its meaning and rule; loading,
              checking (every problem at once) and command-line overrides
expansion.py  the deterministic expansion into run specs, with a cap on their number
preflight.py  checks before any run starts: output folder, device, data, model, batch size
runlist.py    the expanded specs stored beside the runs, so status needs no torch
launches.py   launch.json (a run's submission record) and what executors say about jobs
state.py      each run's state (not launched, queued, running, done, failed, stale)
launcher.py   launch, status, retry and cancel over a sweep's runs
executors/    inline (this process), local (worker processes), slurm (submitit job arrays)
config.py     a compatibility re-export of the names above, for code written before the split
"""
