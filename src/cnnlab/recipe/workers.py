"""Local worker processes of a search: CPU threads per worker, starting and stopping them.

Each worker is ``cnnlab search --join STUDY`` in a child process; the storage URL travels in
the environment, so a database password never shows in the process list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import torch


def threads_per_worker(workers: int) -> int | None:
    """CPU threads each worker may use so that N workers do not oversubscribe the cores."""
    if workers == 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def set_torch_threads(threads: int | None) -> int | None:
    """Let torch use ``threads`` CPU threads (None: leave it); return the previous count."""
    if threads is None:
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def spawn_worker(study_name: str, url: str, seed: int, threads: int | None) -> subprocess.Popen:
    """Start ``cnnlab search --join`` in a child process (the storage URL travels in the
    environment, so a database password never shows in the process list)."""
    env = {**os.environ, "CNNLAB_STORAGE": url}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "cnnlab", "search", "--join", study_name, "--sampler-seed", str(seed), "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def stop_workers(procs: Sequence[subprocess.Popen], grace: float = 60.0) -> None:
    """Ask still-running workers to stop (SIGINT: they finish the step and record the trial), then kill."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGINT)
    for proc in running:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
