"""Shared helpers: real processes only (small Python programs run as services)."""

import pathlib
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

REPO = pathlib.Path(__file__).resolve().parents[3]
#: Generous: the machine may be loaded (2 cores, other builds, `nice`).
PATIENCE = 60.0


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
