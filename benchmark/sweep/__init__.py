"""The sweep launcher: a TOML sweep file, expanded into run specs, run by an executor.

config.py     the sweep file's schema, validation and deterministic expansion into specs
state.py      each run's state (not launched, queued, running, done, failed, stale)
launcher.py   launch, status, retry and cancel over a sweep's runs
executors/    inline (this process), local (worker processes), slurm (submitit job arrays)
"""
