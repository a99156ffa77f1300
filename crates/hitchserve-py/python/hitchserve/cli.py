"""The ``hitchserve`` command (the ``hitchserve-cli`` crate, carried in ``hitchserve._native``):
``python -m hitchserve.cli up --detach``, or the ``hitchserve`` command this package
installs. The same command as ``cargo install hitchserve-cli`` gives: ``hitchserve --help``.

A bundle it starts in the background (``up --detach``, ``up --shared``: what
:class:`hitchserve.SharedBundle` does) runs as ``python -m hitchserve.cli`` too, with this
Python, so the package needs no other install.
"""

import os
import signal
import sys
from typing import List, Optional

from . import _native
from .services import _packaged_hitchsmtp
from .shared import RELAUNCH

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> None:
    """Run the command with ``argv`` (default: this process's arguments); raises
    :class:`SystemExit` with its exit code. Given ``argv`` (called from a Python program),
    the process's signal handling is left as it was."""
    if argv is None:
        # This process is the command. It runs in Rust without the GIL, where Python's own
        # SIGINT handler would only set a flag nobody reads: Ctrl-C must end a client command
        # as it ends the binary (`up` installs handlers of its own, which stop the bundle
        # cleanly).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    # A `kind = "smtp"` service runs the mock this package installed (the engine alone
    # looks next to the interpreter and on PATH: not in a venv that isn't activated).
    told = None
    if not os.environ.get("HITCHSMTP"):
        told = _packaged_hitchsmtp()
        if told:
            os.environ["HITCHSMTP"] = told
    try:
        code = _native.cli_main(RELAUNCH, list(sys.argv[1:] if argv is None else argv))
    finally:
        if told and argv is not None:
            # Called from a Python program: its environment is left as it was.
            os.environ.pop("HITCHSMTP", None)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
