"""A new user's review of the shared bundle from Python (``hitchserve.SharedBundle``, the
``shared_bundle`` fixture): documented behaviour that is not true today. Each test is named
after what the docs promise and fails today; the failure seen is in the comment above it.
Real processes; every bundle is brought down (``hitchserve down``) after."""

import datetime
import json
import subprocess
import time

import hitchserve
from conftest import PATIENCE
from test_shared import cli, define

INI = """
[pytest]
hitchserve_shared_file = hitchserve.toml
hitchserve_shared_idle = 600
"""

# A session-wide starting point in time (a conftest fixture on the session's lease), then a
# test that travels further through its own view.
CONFTEST_SESSION_TRAVEL = """
import datetime
import pytest

@pytest.fixture(scope="session", autouse=True)
def a_year_ahead(hitchserve_shared_bundle):
    hitchserve_shared_bundle.time_travel(days=365)
"""

INNER_SESSION_TRAVEL = """
import datetime

def ahead(shared):
    return shared.now() - datetime.datetime.now()

def test_a_travels_a_day_more(shared_bundle):
    shared_bundle.time_travel(days=1)
    assert ahead(shared_bundle) > datetime.timedelta(days=365)

def test_b_is_back_on_the_sessions_clock(shared_bundle):
    assert ahead(shared_bundle) > datetime.timedelta(days=364), (
        f"the session's year was undone with the first test's day: the clock is "
        f"{shared_bundle.now()}\\n" + shared_bundle.report(10)
    )
"""


# pytest_plugin.py, `shared_bundle`: "a lease taken as it starts ... and a time travel it
# makes is undone after it"; shared.py, `SharedBundle.view`: "a time travel made through it
# is undone when it is released — while this lease (the session's) keeps the bundle".
# Fails today: releasing the first test's view sets the clock back to *real* time, undoing the
# travel the session's lease made, and the log says the session's process left:
#   E       AssertionError: the session's year was undone with the first test's day: the
#   clock is 2026-12-01 12:41:18.777091
#   FAILED test_inner.py::test_b_is_back_on_the_sessions_clock - AssertionError: ...
#   ========================= 1 failed, 1 passed in 0.12s ==========================
# (and with the same calls made directly, the log:
#   [Hitch] Time traveling to 366 days ago (...)
#   [Hitch] The clock is back to real time: process N, which moved it, holds the shared
#   bundle no more — while its session lease still holds it.)
def test_releasing_a_tests_view_undoes_only_the_tests_travel_not_the_sessions(pytester):
    file = define(pytester.path)
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST_SESSION_TRAVEL)
    pytester.makepyfile(test_inner=INNER_SESSION_TRAVEL)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
        result.assert_outcomes(passed=2)
    finally:
        cli(file, "down")


# README, "One bundle for many tests": "Its travel is undone — the clock set back to real
# time, said in the log — once its leases end, so the next test doesn't inherit it." A CI job:
# one step starts the shared bundle (`hitchserve up --shared`, its shell's lease ends with the
# step), another runs `hitchserve time-travel +5d`, then the pytest run attaches.
# Fails today: the travel, asked while nobody held a lease, is allowed and never undone; the
# tests start on it:
#   E   AssertionError: the tests inherit a travel nobody will undo: 2026-12-06 12:41:16.562044
#   (real time 2026-12-01 12:41:16.562170)
def test_a_travel_asked_with_no_lease_held_is_not_inherited_by_the_next_holder(project):
    file = define(project)
    step = subprocess.Popen(["sleep", "1000"])  # the CI step's shell
    try:
        cli(file, "up", "--shared", "--idle", "600s", "--pid", str(step.pid))
        step.kill()
        step.wait()  # the step ends, and its lease with it
        deadline = time.monotonic() + PATIENCE
        while json.loads(cli(file, "status", "--json").stdout)["shared"]["holders"]:
            assert time.monotonic() < deadline, "the ended step still holds a lease"
            time.sleep(0.02)
        travel = cli(file, "time-travel", "+5d", check=False)
        if travel.returncode != 0:
            return  # refused, saying why: nobody inherits anything
        with hitchserve.SharedBundle(file) as shared:
            now, real = shared.now(), datetime.datetime.now()
            assert abs(now - real) < datetime.timedelta(hours=1), (
                f"the tests inherit a travel nobody will undo: {now} (real time {real})"
            )
    finally:
        step.kill()
        step.wait()
        cli(file, "down")
