"""Shared helpers: real processes only (small Python programs run as services)."""

import pathlib
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

REPO = pathlib.Path(__file__).resolve().parents[3]
#: Generous: the machine may be loaded (2 cores, other builds, `nice`).
PATIENCE = 60.0


def gone(pids: "list[int]") -> bool:
    """Whether every one of these processes has ended (waiting for it, generously)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=PATIENCE)

    def ended(p: "psutil.Process") -> bool:
        # A zombie has ended; only its parent (init, or a subreaper) has not reaped it yet.
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(ended(p) for p in alive)


def py(code: str) -> list:
    """The command of a service that runs this Python code (unbuffered)."""
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


#: A service that prints READY and then waits to be stopped.
READY_THEN_WAIT = """
    import sys, time
    print("READY")
    print("a warning", file=sys.stderr)
    while True:
        time.sleep(3600)
"""


@pytest.fixture
def project(hitchserve_project_directory):
    return pathlib.Path(hitchserve_project_directory)


def interrupt_when_armed(code: str, project: str, armed: str = "ARMED") -> "tuple[str, str]":
    """Run ``code`` (Python) in a child with ``project`` as its argument; once it prints
    ``armed`` (the line before its blocking call, or one the call prints once it waits),
    send it SIGINT; its (stdout, stderr)."""
    import signal
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-u", "-c", code, project],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        # (The bundle prints its services' lines from other threads: ARMED may share a line.)
        for line in child.stdout:
            if armed in line:
                break
        child.send_signal(signal.SIGINT)
        return child.communicate(timeout=PATIENCE)
    finally:
        child.kill()
