"""Review of #15's Python side: what a user hits with one-service faults. Each test fails on a
bug found in review (see the test's docstring for where); real processes, no sleeps."""

import itertools
import threading

import pytest

import hitchserve
from conftest import PATIENCE, READY_THEN_WAIT, py


def ready_then_wait(**kwargs):
    kwargs.setdefault("log_line_ready_checker", lambda line: line == "READY")
    return hitchserve.Service(command=py(READY_THEN_WAIT), **kwargs)


@pytest.mark.parametrize(
    "what",
    ["kill", "pause", "resume", "wait_until_ready", "bundle.wait_until_ready", "process"],
)
def test_not_running_errors_of_a_stopped_service_name_it_in_their_service_attribute(
    what, service_bundle
):
    """src/lib.rs `context_of` has no arm for `Error::ServiceNotRunning`, and
    service.py `process` raises NotRunning without setting `service`: the message names the
    service, `exc.service` (documented in errors.py) is None."""
    service_bundle["Stopped"] = ready_then_wait()
    service_bundle.startup()
    stopped = service_bundle["Stopped"]
    stopped.stop()
    with pytest.raises(hitchserve.NotRunning) as raised:
        if what == "process":
            stopped.process
        elif what == "bundle.wait_until_ready":
            service_bundle.wait_until_ready("Stopped")
        else:
            getattr(stopped, what)()
    assert "`Stopped`" in str(raised.value)
    assert raised.value.service == "Stopped"


def test_signal_to_a_stopped_service_says_the_service_is_stopped_not_call_startup_first(
    service_bundle,
):
    """crates/hitchserve/src/handle.rs `signal` answers `Error::NotRunning` ("the bundle is
    not running: call startup first") where `kill` answers `not_running(idx, ..)`: a test
    that stopped a service and signals it is told to call startup, which it did."""
    service_bundle["Stopped"] = ready_then_wait()
    service_bundle.startup()
    stopped = service_bundle["Stopped"]
    stopped.stop()
    with pytest.raises(hitchserve.NotRunning) as raised:
        stopped.signal("SIGHUP")
    assert "call startup first" not in str(raised.value)
    assert "`Stopped`" in str(raised.value)
    assert raised.value.service == "Stopped"


@pytest.mark.parametrize("what", ["start", "restart"])
def test_start_or_restart_after_shutdown_says_the_bundle_was_shut_down(what, project):
    """runtime/control.rs `start_again` / `restart_one` and report.rs `wait_ready_after`
    answer a bundle that is stopping or stopped with `Error::NotRunning`: "the bundle is not
    running: call startup first", advice that is wrong (startup() ran; calling it again is
    `AlreadyStarted`) and a message that names no service."""
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Late"] = ready_then_wait()
    bundle.startup()
    bundle.shutdown()
    with pytest.raises(hitchserve.NotRunning) as raised:
        getattr(bundle["Late"], what)()
    assert "call startup first" not in str(raised.value)
    assert "`Late`" in str(raised.value)


def test_start_raises_its_own_checker_exception_not_a_stale_one_from_a_policy_restart(
    service_bundle,
):
    """src/lib.rs: an exception a readiness check raised during a start nobody waits on (a
    restart by the policy, or a start whose caller pressed Ctrl-C) stays in `Raised`
    forever; the next `start()` of that service that fails pops that stale exception
    (`Raised::take` returns the oldest) instead of the one its own start raised."""
    calls = itertools.count(1)
    policy_restart_raised = threading.Event()

    def checker(line):
        call = next(calls)
        if call == 1:
            return True  # startup
        if call == 2:
            policy_restart_raised.set()
            raise ValueError("raised during the policy's restart")
        raise ValueError("raised during start()")

    service_bundle["Worker"] = ready_then_wait(
        log_line_ready_checker=checker, restart="on-failure", max_restarts=1
    )
    service_bundle.startup()
    worker = service_bundle["Worker"]
    worker.kill()
    assert policy_restart_raised.wait(PATIENCE)
    worker.stop()
    with pytest.raises(ValueError) as raised:
        worker.start()
    assert str(raised.value) == "raised during start()"


@pytest.mark.parametrize("backoff", [1e30, 2.0**64])
def test_a_restart_backoff_the_engine_cannot_hold_is_refused_when_the_service_is_defined(
    backoff, project
):
    """service.py `_check_restart` accepts any finite backoff; src/lib.rs `secs` then
    refuses one over ~1.8e19 s at startup() with a bare ValueError, after the docstring
    promised bad restart arguments are refused up front with DefinitionError."""
    try:
        service = ready_then_wait(restart="always", max_restarts=1, restart_backoff=backoff)
    except hitchserve.DefinitionError:
        return
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Slow"] = service
    with bundle:
        try:
            bundle.startup()
        except ValueError as startup_error:
            pytest.fail(f"accepted by Service(...), refused by startup(): {startup_error!r}")
    pytest.fail(f"restart_backoff={backoff} was accepted")
