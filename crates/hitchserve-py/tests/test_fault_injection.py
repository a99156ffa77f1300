"""One service at a time: stop, start, restart, pause, resume and kill on a started bundle,
restart policies, incarnations in the logs, Ctrl-C during these waits, and no process left
behind. Real servers and a real client (a TCP line server, a socket with a timeout)."""

import signal
import socket
import textwrap

import pytest

import hitchserve
from conftest import PATIENCE, READY_THEN_WAIT, gone, interrupt_when_armed, py

# Answers each connection's one line with its pid and that line, one connection at a time.
# (No braces in it: the command is a template, `{port.line}` is the port.)
LINE_SERVER = """
    import os, socket, sys
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen(8)
    print("LISTENING")
    while True:
        conn, _ = server.accept()
        try:
            request = conn.makefile("rb").readline()
            conn.sendall(b"pid %d: %s" % (os.getpid(), request))
        except OSError:
            pass  # the client gave up (its request timed out while we were paused)
        finally:
            conn.close()
"""


def line_server(**kwargs):
    return hitchserve.Service(
        command=py(LINE_SERVER) + ["{port.line}"],
        ports=["line"],
        log_line_ready_checker=lambda line: line == "LISTENING",
        **kwargs,
    )


def ask(port, text, timeout=PATIENCE):
    """One request on a fresh connection, as a client does; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(text.encode() + b"\n")
        return conn.makefile("rb").readline().decode()


def test_a_restart_keeps_the_port_and_a_client_reconnects_to_the_new_process(service_bundle):
    service_bundle["Lines"] = line_server()
    service_bundle.startup()
    lines = service_bundle["Lines"]
    port = lines.port("line")
    first = lines.pid
    assert ask(port, "one") == f"pid {first}: one\n"
    assert lines.incarnation == 1
    # A client holding a connection to the old process...
    held = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)

    lines.restart()

    with held:  # ... sees it close, and reconnects to the same port.
        try:
            assert held.recv(100) == b""
        except ConnectionResetError:
            pass
    assert lines.incarnation == 2
    assert lines.port("line") == port
    assert lines.pid not in (None, first)
    assert lines.process.pid == lines.pid
    assert gone([first])
    assert ask(port, "two") == f"pid {lines.pid}: two\n"
    hitch = service_bundle.logs.lines()
    assert "Stopping Lines" in hitch
    assert "Starting Lines (incarnation 2)" in hitch
    assert hitch.index("Stopping Lines") < hitch.index("Starting Lines (incarnation 2)")


def test_a_paused_service_times_a_request_out_and_answers_once_resumed(service_bundle):
    service_bundle["Lines"] = line_server()
    service_bundle.startup()
    lines = service_bundle["Lines"]
    port = lines.port("line")
    assert ask(port, "before").endswith(": before\n")

    lines.pause()
    assert lines.is_paused
    assert "paused" in repr(lines)
    # The kernel still accepts the connection; nobody reads it.
    with pytest.raises(socket.timeout):
        ask(port, "while paused", timeout=0.5)

    lines.resume()
    assert not lines.is_paused
    assert ask(port, "after") == f"pid {lines.pid}: after\n"
    assert lines.incarnation == 1
    hitch = service_bundle.logs.lines()
    assert "Pausing Lines (SIGSTOP)" in hitch
    assert "Resuming Lines (SIGCONT)" in hitch


def test_kill_after_ready_is_reported_as_a_crash_by_check(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Victim"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    bundle.startup()
    victim = bundle["Victim"]
    pid = victim.pid
    victim.kill(signal.SIGKILL)
    assert victim.wait_exit(timeout=PATIENCE) is not None
    with pytest.raises(hitchserve.ServiceExited) as raised:
        bundle.check()
    assert raised.value.service == "Victim"
    assert "SIGKILL" in str(raised.value)
    # Told by check(): shutdown has nothing to add.
    bundle.shutdown()
    assert gone([pid])


def test_start_right_after_kill_starts_it_again(project):
    # kill() (SIGKILL) returns once the exit is recorded: start() right after starts a new
    # process. (Before, kill() returned once the signal was sent: start() found the dying
    # process still running and did nothing, or raised its crash.)
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Victim"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    bundle.startup()
    victim = bundle["Victim"]
    pids = [victim.pid]
    for round in (2, 3):
        victim.kill()
        assert not victim.is_running
        victim.start()
        assert victim.incarnation == round
        assert victim.pid not in pids
        pids.append(victim.pid)
    bundle.check()
    bundle.shutdown()
    assert gone(pids)


def test_kill_takes_a_signal_name_and_refuses_an_unknown_one(service_bundle):
    service_bundle["Victim"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    service_bundle.startup()
    with pytest.raises(ValueError, match="SIGNOPE"):
        service_bundle["Victim"].kill("SIGNOPE")
    assert service_bundle["Victim"].is_running


def test_kill_with_a_crash_signal_as_the_docs_show(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Victim"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    bundle.startup()
    bundle["Victim"].kill(signal.SIGSEGV)
    assert bundle["Victim"].wait_exit(timeout=PATIENCE) is not None
    with pytest.raises(hitchserve.ServiceExited, match="SIGSEGV"):
        bundle.shutdown()


def test_a_call_from_another_thread_during_shutdown_waits_for_it(project):
    """The bundle stays in its place while it stops: another thread's call waits for the
    stop (it was told the bundle was starting up), and a second shutdown does nothing."""
    import threading

    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE, shutdown_timeout=1)
    bundle["Stubborn"] = hitchserve.Service(
        command=py("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up'); time.sleep(3600)"),
        log_line_ready_checker=lambda line: line == "up",
    )
    bundle.startup()
    tail = bundle.logs.tail
    stopping = threading.Thread(target=bundle.shutdown)
    stopping.start()
    tail.until(lambda l: l == "Stopping Stubborn", timeout=PATIENCE)
    # Mid-stop (it waits out a 1 s grace): these wait for it, then answer.
    assert isinstance(bundle.now(), object)
    assert bundle["Stubborn"].pid is None
    bundle.shutdown()
    stopping.join(timeout=PATIENCE)
    assert not stopping.is_alive()


def test_stop_then_start_runs_the_same_service_again_and_only_setup_true_reruns_setup(project):
    class Counted(hitchserve.Service):
        def setup(self):
            self.log("setting up")

    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Counted"] = Counted(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    with bundle:
        bundle.startup()
        counted = bundle["Counted"]
        first = counted.pid
        counted.stop()
        assert not counted.is_running and counted.pid is None
        assert gone([first])
        bundle.check()  # a stop is expected: no crash
        counted.start()
        assert counted.is_ready and counted.incarnation == 2
        counted.restart(setup=True)
        assert counted.is_ready and counted.incarnation == 3
        bundle.wait_until_ready("Counted")  # ready already: returns at once
        assert counted.logs.setup.lines() == ["setting up", "setting up"]


def test_a_ready_checker_that_raises_during_start_fails_it_with_that_exception(service_bundle):
    answers = iter([True])  # ready the first time; raises the second

    def checker(line):
        if next(answers, None) is None:
            raise ValueError("no second chance")
        return True

    service_bundle["Once"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=checker
    )
    service_bundle.startup()
    service_bundle["Once"].stop()
    with pytest.raises(ValueError, match="no second chance") as raised:
        service_bundle["Once"].start()
    assert any("`Once`" in note for note in raised.value.__notes__)


def test_wait_until_ready_on_a_stopped_service_says_it_is_not_running(service_bundle):
    service_bundle["Stopped"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    service_bundle.startup()
    service_bundle["Stopped"].stop()
    with pytest.raises(hitchserve.NotRunning):
        service_bundle.wait_until_ready("Stopped")  # nothing will make it ready


def test_a_tail_taken_before_a_restart_sees_both_incarnations_lines_in_order(service_bundle):
    service_bundle["Greeter"] = hitchserve.Service(
        command=py("""
            import signal, sys, time
            def bye(*_):
                print("bye")
                sys.exit(0)
            signal.signal(signal.SIGTERM, bye)
            print("hello")
            print("READY")
            while True:
                time.sleep(3600)
        """),
        log_line_ready_checker=lambda line: line == "READY",
    )
    service_bundle.startup()
    greeter = service_bundle["Greeter"]
    tail = greeter.logs.out.tail

    greeter.restart()

    seen = [tail.until(lambda line: True, timeout=PATIENCE, lines_back=2)]
    seen += [tail.until(lambda line: True, timeout=PATIENCE) for _ in range(4)]
    assert [(str(line), line.incarnation) for line in seen] == [
        ("hello", 1),
        ("READY", 1),
        ("bye", 1),
        ("hello", 2),
        ("READY", 2),
    ]
    assert [line.seq for line in seen] == sorted(line.seq for line in seen)
    assert all(line.incarnation == 0 for line in service_bundle.logs if line.service == "Hitch")


# Each start appends to `starts`; the first one waits to be killed, the later ones crash.
CRASHER = """
    import sys, time
    with open("starts", "a+") as starts:
        starts.write("start\\n")
        starts.seek(0)
        count = len(starts.readlines())
    print("READY")
    if count > 1:
        print("crashing", file=sys.stderr)
        sys.exit(3)
    while True:
        time.sleep(3600)
"""


def test_a_restart_policy_restarts_a_crashing_service_n_times_then_reports_it(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Worker"] = hitchserve.Service(
        command=py(CRASHER),
        log_line_ready_checker=lambda line: line == "READY",
        restart="on-failure",
        max_restarts=2,
        restart_backoff=0.05,
    )
    bundle["Dependent"] = hitchserve.Service(
        command=py(READY_THEN_WAIT),
        log_line_ready_checker=lambda line: line == "READY",
        needs=["Worker"],
    )
    bundle.startup()
    worker, dependent = bundle["Worker"], bundle["Dependent"]

    tail = bundle.logs.tail
    worker.kill("KILL")

    # Its policy restarts it twice (each start crashes), then gives up.
    tail.until(lambda line: "giving up" in line, timeout=PATIENCE)
    assert not worker.is_running
    assert worker.wait_exit(timeout=PATIENCE) == "exit code 3"
    assert worker.returncode == 3
    assert worker.incarnation == 3
    assert (project / "starts").read_text() == "start\n" * 3
    hitch = bundle.logs.lines()
    assert any("`Worker` exited unexpectedly" in l and "restart 1 in 0.05 s" in l for l in hitch)
    assert any("restart 2 in 0.10 s" in l for l in hitch)
    assert any("was restarted 2 times: giving up" in l for l in hitch)
    assert dependent.incarnation == 1 and dependent.is_running
    with pytest.raises(hitchserve.ServiceExited) as raised:
        bundle.check()
    assert raised.value.service == "Worker"
    assert raised.value.returncode == 3
    # Told by check(): shutdown has nothing to add.
    bundle.shutdown()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(restart="sometimes"), hitchserve.DefinitionError, "not a restart policy"),
        (dict(restart="always"), hitchserve.DefinitionError, "needs max_restarts=N"),
        (dict(max_restarts=3), hitchserve.DefinitionError, "apply to restart='on-failure'"),
        (dict(restart="always", max_restarts=-1), hitchserve.DefinitionError, "0 or more"),
        (dict(restart="always", max_restarts="3"), TypeError, "number of restarts"),
        (dict(restart="always", max_restarts=1, restart_backoff="1s"), TypeError, "seconds"),
        (dict(restart=True), TypeError, "'never', 'on-failure', 'always'"),
    ],
)
def test_a_bad_restart_policy_is_refused_when_the_service_is_defined(kwargs, error, words):
    with pytest.raises(error, match=words):
        hitchserve.Service(command=["true"], **kwargs)


def test_paused_and_restarted_services_leave_no_process_behind(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE, shutdown_timeout=5.0)
    # A service with a child in its process group (as a server with workers).
    bundle["Family"] = hitchserve.Service(
        command=py("""
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            print("CHILD", child.pid)
            print("READY")
            while True:
                time.sleep(3600)
        """),
        log_line_ready_checker=lambda line: line == "READY",
    )
    bundle.startup()
    family = bundle["Family"]

    def pids():
        child = family.logs.out.tail.until(lambda l: l.startswith("CHILD"), lines_back=2)
        return [family.pid, int(child.split()[1])]

    first = pids()
    family.restart()
    assert gone(first)
    second = pids()
    assert set(first).isdisjoint(second)
    family.pause()
    bundle.shutdown()  # stopping a paused service resumes it first
    assert gone(second)


# A child Python process that gets a real SIGINT during one of these waits. Its service is
# ready only the first time it says "up": a start or restart then waits (up to 120 s).
CHILD = """
    import sys, hitchserve
    bundle = hitchserve.ServiceBundle(sys.argv[1], startup_timeout=120)
    ready_once = iter([True])
    bundle["Once"] = hitchserve.Service(
        command=[sys.executable, "-u", "-c", "import time; print('up'); time.sleep(3600)"],
        log_line_ready_checker=lambda line: line == "up" and next(ready_once, False),
        restart="always",
        max_restarts=1,
    )
    bundle.startup()
    once = bundle["Once"]
    try:
        {body}
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise
"""

BODIES = {
    "start": "once.stop(); sys.stdout.write('ARMED\\n'); sys.stdout.flush(); once.start()",
    "restart": "sys.stdout.write('ARMED\\n'); sys.stdout.flush(); once.restart()",
    # Killed, restarted by its policy (its "up" seen), never ready again.
    "wait_until_ready": (
        "tail = once.logs.tail; once.kill(); tail.until(lambda l: l == 'up', timeout=120); "
        "sys.stdout.write('ARMED\\n'); sys.stdout.flush(); bundle.wait_until_ready('Once')"
    ),
}


@pytest.mark.parametrize("what", sorted(BODIES))
def test_ctrl_c_interrupts_a_start_restart_or_wait_until_ready(what, tmp_path):
    code = textwrap.dedent(CHILD).format(body=BODIES[what])
    out, err = interrupt_when_armed(code, str(tmp_path))
    assert "KeyboardInterrupt" in err, err
    assert "INTERRUPTED" in out, out
    assert "StartupTimeout" not in err


def test_a_wait_for_ready_during_another_threads_restart_waits_for_the_new_process(service_bundle):
    # It returned at once: the old process, stopping, counted as ready.
    import threading

    service_bundle["Slow"] = hitchserve.Service(
        command=["sh", "-c", "trap 'sleep 0.5; exit 0' TERM; echo READY; while :; do sleep 0.05; done"],
        log_line_ready_checker=lambda line: line == "READY",
    )
    service_bundle.startup()
    slow = service_bundle["Slow"]
    old = slow.pid
    restarter = threading.Thread(target=slow.restart)
    restarter.start()
    stopping = threading.Event()
    for _ in range(100_000):
        if slow.is_stopping:
            stopping.set()
            break
        stopping.wait(0.001)
    assert stopping.is_set()
    assert not slow.is_ready and "stopping" in repr(slow)
    slow.wait_until_ready()
    assert slow.is_ready and slow.pid != old
    restarter.join(PATIENCE)
