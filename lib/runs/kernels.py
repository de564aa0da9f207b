"""Jupyter kernels for batch runs that cannot collide when several start at once.

Two papermill kernels started together on TCP can pick the same free port (jupyter_client probes a port,
closes it, and the kernel binds it later: papermill #511, jupyter_client #154), and the loser dies with
``ZMQError: Address already in use`` / ``Kernel died before replying to kernel_info``. Local kernels here
talk over IPC (Unix sockets) at a path unique to each kernel, so there is no port to race for; a kernel
that still fails to start (before any cell ran) is started again with a fresh connection file.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
import time
import uuid

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

log = logging.getLogger(__name__)
START_TRIES = 3          # kernel starts per notebook before the failure is the point's


class IPCKernelManager(AsyncKernelManager):
    """A local kernel on IPC transport, its sockets under a path no other kernel uses."""

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"

    @default("ip")
    def _ip_default(self) -> str:
        # jupyter_client's default is 'kernel-ipc' in the working directory, shared by every kernel started
        # there; a Unix socket path is limited to ~100 bytes, so the short temp dir rather than the runtime dir.
        return os.path.join(tempfile.gettempdir(), f"kernel-{uuid.uuid4().hex[:12]}-ipc")


def manager_class() -> type:
    """IPC where Unix sockets exist (not on Windows); SUITE_KERNEL_TRANSPORT=tcp restores jupyter's default."""
    if os.name == "nt" or os.environ.get("SUITE_KERNEL_TRANSPORT", "ipc").lower() == "tcp":
        return AsyncKernelManager
    return IPCKernelManager


def started_no_cell(out_nb) -> bool:
    """Whether papermill's output notebook shows no cell started (the failure was the kernel's start)."""
    import nbformat

    try:
        cells = nbformat.read(out_nb, as_version=4).cells
    except (OSError, ValueError):
        return True
    return not any(c.metadata.get("papermill", {}).get("start_time") for c in cells)


def retry_pause(attempt: int) -> float:
    """Seconds before start ``attempt + 1``: growing, jittered so two workers that collided do not again."""
    return attempt + random.uniform(0.0, 1.0)


def with_start_retries(execute, out_nb, what: str, tries: int = START_TRIES):
    """Call ``execute()``; an exception raised before any cell of ``out_nb`` started is a failed kernel start,
    retried (a new kernel manager, so a fresh connection file) up to ``tries`` starts in all."""
    for attempt in range(1, tries + 1):
        try:
            return execute()
        except Exception as exc:
            if attempt == tries or not is_start_failure(exc, out_nb):
                raise
            pause = retry_pause(attempt)
            log.warning(f"{what}: the kernel failed to start ({type(exc).__name__}: {exc}); "
                        f"starting a fresh one in {pause:.1f} s (try {attempt + 1} of {tries})")
            time.sleep(pause)


def is_start_failure(exc: BaseException, out_nb) -> bool:
    """A kernel that died or timed out before running a cell; a failing cell is never one."""
    import papermill as pm
    from jupyter_client.kernelspec import NoSuchKernel

    return not isinstance(exc, (pm.PapermillExecutionError, NoSuchKernel)) and started_no_cell(out_nb)
