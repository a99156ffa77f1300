"""Ctrl-C answered while Rust waits (startup, tail.until, tail.follow), in a real child
Python process that gets a real SIGINT; and waiting for an embedded IPython kernel."""

import os
import subprocess
import sys
import textwrap

import pytest

import hitchserve
from conftest import PATIENCE, gone, interrupt_when_armed, py

# The child prints ARMED just before the blocking call; a wait that did not answer Ctrl-C
# would run into its 120 s timeout, past the parent's patience.
CHILD = """
    import sys, hitchserve
    bundle = hitchserve.ServiceBundle(sys.argv[1], startup_timeout=120)
    bundle["Quiet"] = hitchserve.Service(
        command=[sys.executable, "-u", "-c", "import time; print('up'); time.sleep(3600)"],
        log_line_ready_checker=lambda line: line == {ready!r},
    )
    try:
        {body}
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise
"""

BODIES = {
    "startup": "sys.stdout.write('ARMED\\n'); sys.stdout.flush(); bundle.startup()",
    "until": "bundle.startup(); sys.stdout.write('ARMED\\n'); sys.stdout.flush(); bundle['Quiet'].logs.tail.until(lambda l: l == 'never', timeout=120)",
    "follow": "bundle.startup(); sys.stdout.write('ARMED\\n'); sys.stdout.flush(); [l for l in bundle['Quiet'].logs.tail.follow()]",
    # The sub-command says ARMED itself (its output goes where the test's goes), then runs on:
    # SIGINT to the test's process alone must not wait for it to end.
    "subcommand": "bundle.startup(); bundle['Quiet'].subcommand('sh', '-c', 'echo ARMED; exec sleep 3600').run()",
}


@pytest.mark.parametrize("what", sorted(BODIES))
def test_ctrl_c_interrupts_a_wait_in_rust(what, tmp_path):
    ready = "never" if what == "startup" else "up"
    code = textwrap.dedent(CHILD).format(ready=ready, body=BODIES[what])
    out, err = interrupt_when_armed(code, str(tmp_path))
    assert "KeyboardInterrupt" in err, err
    assert "INTERRUPTED" in out, out
    assert "LogTimeout" not in err and "StartupTimeout" not in err
    assert "RuntimeError" not in err and "SubcommandFailed" not in err, err


def test_ctrl_c_as_a_subcommand_fails_raises_keyboard_interrupt(tmp_path):
    # The sub-command sends the test SIGINT, then fails: the answer ("failed") and the
    # Ctrl-C arrive together. KeyboardInterrupt is what the test gets — not
    # `SubcommandFailed`, nor a RuntimeError caused by the interrupt landing while that
    # error was made (as before).
    body = (
        "bundle.startup(); "
        "bundle['Quiet'].subcommand('sh', '-c', 'kill -INT $PPID; exit 3').run()"
    )
    code = textwrap.dedent(CHILD).format(ready="up", body=body)
    child = subprocess.run(
        [sys.executable, "-u", "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert "INTERRUPTED" in child.stdout, child.stdout + child.stderr
    assert "KeyboardInterrupt" in child.stderr, child.stderr
    assert "RuntimeError" not in child.stderr and "SubcommandFailed" not in child.stderr


STUBBORN = """
    import sys, hitchserve
    bundle = hitchserve.ServiceBundle(sys.argv[1], startup_timeout=120, shutdown_timeout=30)
    # It ignores its stop signal: only SIGKILL ends it.
    bundle["Stubborn"] = hitchserve.Service(
        command=[sys.executable, "-u", "-c",
                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "print('up'); time.sleep(3600)"],
        log_line_ready_checker=lambda line: line == "up",
    )
    bundle.startup()
    print("PID", bundle["Stubborn"].pid, file=sys.stderr, flush=True)
    try:
        bundle.shutdown()
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise
"""


def test_ctrl_c_during_shutdown_kills_what_is_left_at_once(tmp_path):
    # Interrupted once the shutdown has sent its stop signal (and waits for the grace).
    out, err = interrupt_when_armed(textwrap.dedent(STUBBORN), str(tmp_path), "Stopping Stubborn")
    assert "KeyboardInterrupt" in err, err
    assert "INTERRUPTED" in out, out
    # Not the end of the 30 s grace: the stop was cut short.
    assert "had not stopped when the stop was interrupted: killed with SIGKILL" in out + err
    pid = int(next(l for l in err.splitlines() if l.startswith("PID ")).split()[1])
    assert gone([pid])


KERNEL = """
    import IPython
    secret = 6 * 7
    IPython.embed_kernel()
"""


def test_wait_for_kernel_gives_the_connection_file_of_an_embedded_kernel(service_bundle, project):
    jupyter_client = pytest.importorskip("jupyter_client")
    service_bundle["Celery"] = hitchserve.Service(
        command=py(KERNEL),
        env_vars={"JUPYTER_RUNTIME_DIR": str(project / "runtime")},
        no_libfaketime=True,
    )
    service_bundle.startup()
    connection_file = service_bundle.wait_for_kernel("Celery", timeout=PATIENCE)
    assert os.path.isfile(connection_file)
    client = jupyter_client.BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=PATIENCE)
        reply = client.execute_interactive("print(secret)", timeout=PATIENCE, output_hook=_collect)
        assert reply["content"]["status"] == "ok"
        assert _collected == ["42\n"]
    finally:
        client.stop_channels()


_collected = []


def _collect(msg):
    if msg["msg_type"] == "stream":
        _collected.append(msg["content"]["text"])


def test_wait_for_kernel_times_out_naming_the_service(service_bundle):
    service_bundle["NoKernel"] = hitchserve.Service(
        command=py("import time; print('READY'); time.sleep(3600)"),
        log_line_ready_checker=lambda l: l == "READY",
    )
    service_bundle.startup()
    with pytest.raises(hitchserve.LogTimeout, match="`NoKernel` to embed an IPython kernel"):
        service_bundle.wait_for_kernel("NoKernel", timeout=0.2)
