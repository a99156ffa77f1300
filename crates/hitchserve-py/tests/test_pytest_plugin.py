"""The pytest plugin: a bundle per test (and per xdist worker), torn down after it, and a
failure report with the bundle's last lines and the kept all.log."""

import os
import re

import pytest
from conftest import gone

INNER = '''
import sys
import hitchserve

SERVICE = [sys.executable, "-u", "-c",
           "import sys, time; print('READY'); print('port', sys.argv[1]); time.sleep(3600)", "{port.http}"]

def start(bundle):
    bundle["Web"] = hitchserve.Service(command=SERVICE, ports=["http"],
                                       log_line_ready_checker=lambda line: line == "READY")
    bundle.startup()
    return bundle["Web"]

def say(text):
    # One write: the bundle prints its services' lines from other threads meanwhile, and
    # `print` writes its parts one by one, so another line could land in the middle.
    sys.stdout.write(text + "\\n")
    sys.stdout.flush()

def test_fails_and_reports(service_bundle):
    web = start(service_bundle)
    assert web.logs.out.lines() == ["nothing like this"]

def test_has_its_own_port_a(service_bundle):
    web = start(service_bundle)
    say(f"PORT {web.port('http')} PID {web.pid}")

def test_has_its_own_port_b(service_bundle):
    web = start(service_bundle)
    say(f"PORT {web.port('http')} PID {web.pid}")

def test_passes_and_cleans_up(service_bundle, hitchserve_project_directory):
    start(service_bundle)
    say(f"PROJECT {hitchserve_project_directory}")
'''


def test_a_failed_test_reports_the_bundles_last_lines_and_all_log(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-k", "fails_and_reports", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "hitchserve bundle" in out
    assert re.search(r"\[\s*Web\] READY", out)
    match = re.search(r"all\.log: (\S+)", out)
    assert match, out
    with open(match.group(1)) as log:  # kept after the failed test
        assert "READY" in log.read()


def test_a_passed_tests_project_directory_is_removed_after_it(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-k", "cleans_up", "-p", "no:cacheprovider", "-rP")
    result.assert_outcomes(passed=1)
    match = re.search(r"PROJECT (\S+)", result.stdout.str())
    assert match, result.stdout.str()
    assert not os.path.exists(match.group(1))


@pytest.mark.skipif(os.geteuid() != 0, reason="running a service as another user needs root")
def test_the_fixtures_project_directory_is_reachable_by_a_service_of_another_user(service_bundle):
    import hitchserve

    service_bundle["Nobody"] = hitchserve.Service(
        command=["/bin/sh", "-c", "echo READY; pwd; exec sleep 3600"],
        user="nobody",
        log_line_ready_checker=lambda line: line == "READY",
    )
    service_bundle.startup()
    assert service_bundle["Nobody"].process.username() == "nobody"
    assert service_bundle["Nobody"].logs.out.tail.until(
        lambda line: line.startswith("/"), lines_back=2, timeout=60
    ) == service_bundle.project_directory


def test_each_xdist_worker_gets_its_own_bundle_and_ports_and_stops_it(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-n", "2", "-k", "own_port", "-p", "no:cacheprovider",
                                           "-rP")
    result.assert_outcomes(passed=2)
    found = re.findall(r"PORT (\d+) PID (\d+)", result.stdout.str())
    assert len(found) == 2, result.stdout.str()
    assert found[0][0] != found[1][0]
    assert gone([int(pid) for _, pid in found])



LATE = """
import sys
import pytest

@pytest.fixture
def app(service_bundle):
    import hitchserve
    service_bundle["App"] = hitchserve.Service(
        command=[sys.executable, "-u", "-c", "import time; print('READY'); time.sleep(3600)"],
        log_line_ready_checker=lambda line: line == "READY")
    service_bundle.startup()
    assert not service_bundle.interactive
    yield service_bundle
    # After the test (pytest's capture is off until the teardown's begins): not printing.
    assert service_bundle.interactive

def test_fails(app):
    assert False

def test_passes(app):
    pass
"""


def test_after_the_test_its_bundles_stop_printing(pytester):
    """Between a test and its teardown pytest's capture is off: a service line printed then
    reached the terminal, outside the test's report (its lines are still stored)."""
    pytester.makepyfile(test_inner=LATE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
