"""Device names, checked in one place: by the sweep file's schema, before a run or sweep
starts (invbench.sweep.preflight) and when a run picks its device (invbench.trainer).

torch is imported only to ask whether CUDA is there, so the schema stays free of it.
"""

from __future__ import annotations

from invbench.errors import ConfigError

DEVICES = "auto, cpu, cuda or cuda:N"


def is_device_name(name: object) -> bool:
    """auto, cpu, cuda or cuda:N."""
    if not isinstance(name, str):
        return False
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    return name in ("auto", "cpu", "cuda") or (index is not None and index.isdigit())


def check_device(device: str, flag: str = "--device") -> None:
    """``device`` is a device name, and CUDA is there when it asks for CUDA."""
    if not is_device_name(device):
        raise ConfigError(f"{flag} {device!r} is not a device; allowed: {DEVICES}")
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {device!r} was asked for but CUDA is not available on this machine; "
                          f"use --device cpu or auto")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{flag} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")


def resolve_device(name: str, flag: str = "device"):
    """The torch device a run trains on (``auto``: CUDA when it is there, else the CPU)."""
    import torch

    check_device(name, flag)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
