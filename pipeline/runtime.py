"""Where and on how many threads torch runs: params.yaml ``runtime``, applied by every torch stage.

One place, so embed, the teachers, the export's network part, the student, evaluate and
``predict`` all honour the same two settings (``params.RuntimeParams``). The CLI sets a passive
OpenMP wait policy before torch loads (``structkd.cli``); this module sets the thread count and
resolves the device.
"""

from __future__ import annotations

import torch

from structkd.errors import ConfigError
from structkd.pipeline.params import RuntimeParams, check_range, device_problem, field_of


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(runtime: RuntimeParams) -> torch.device:
    """Set torch's intra-op threads to ``runtime.threads``; the device the stage runs on."""
    torch.set_num_threads(runtime.threads)
    return resolve_device(runtime.device)


def checked(device: str, threads: int) -> RuntimeParams:
    """Runtime settings given on a command line (``predict``), refused in one line like
    params.yaml's.

    Raises:
        ConfigError: ``--device: 'cuda' is not available on this machine`` (or not a device).
    """
    problem = device_problem(device)
    if problem is not None:
        raise ConfigError(f"--device: {device!r} {problem}")
    check_range(field_of(RuntimeParams, "threads"), threads, "--threads")
    return RuntimeParams(device=device, threads=threads)
