"""A budget counts from the process's start: Python's start-up and imports included."""

from __future__ import annotations

import subprocess
import sys
import time

from cnnlab.recipe.state import Clock, RecipeState
from cnnlab.uptime import process_age, process_started


def test_process_age_sees_the_time_before_cnnlab_was_imported() -> None:
    code = "import time; time.sleep(0.6); from cnnlab.uptime import process_age; print(process_age())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.6 <= age < 30


def test_process_started_is_in_the_past_of_this_process() -> None:
    age = process_age()
    assert age is not None and age > 0
    assert abs((time.monotonic() - process_started()) - age) < 0.1


def test_a_clock_started_at_the_process_start_has_already_spent_that_time() -> None:
    state = RecipeState(config={}, options={})
    late = Clock(state, 300.0, start=time.monotonic() - 4.0)
    now = Clock(state, 300.0)
    assert 4.0 <= late.spent() < 5.0 and now.spent() < 1.0
    assert late.left() <= 296.0 < now.left()
