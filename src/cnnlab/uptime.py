"""When this process started, on the ``time.monotonic()`` clock.

A budget counts from the moment a user starts a command, and Python's start-up and
cnnlab's imports (torch's above all) come before any code of the command runs: measured
on 2 CPU cores, 2-4 s of a 5-minute recipe, which its clock did not see (the recipe ended
a few seconds past its own budget in every timed run; docs/benchmarks.md). The kernel
knows when the process started; this module reads it.
"""

from __future__ import annotations

import os
import time

_STAT = "/proc/self/stat"
_UPTIME = "/proc/uptime"


def process_age() -> float | None:
    """Seconds since this process started, or None where the system does not say (not Linux)."""
    try:
        with open(_STAT, encoding="ascii") as f:
            stat = f.read()
        with open(_UPTIME, encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        # Field 22 (starttime, in clock ticks since boot); the command name (field 2) may hold
        # spaces and parentheses, so count the fields after its closing parenthesis.
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return age if 0.0 <= age < 86400.0 * 365 else None


def process_started() -> float:
    """The ``time.monotonic()`` value at which this process started (now, where unknown)."""
    now = time.monotonic()
    age = process_age()
    return now if age is None else now - age
