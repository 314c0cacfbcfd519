"""invbench engine: specs, registries, runner, sweeps, executors, results and the CLI.

The engine knows methods and datasets only through the registries; nothing here imports a
particular method or dataset.
"""

__version__ = "0.1.0"
