"""The mock SMTP server (the ``hitchsmtp`` crate, carried in ``hitchserve._native``):
``python -m hitchserve.smtp --host 127.0.0.1 --port 1025``, or the ``hitchsmtp`` command
this package installs. :class:`hitchserve.services.Smtp` runs it.

Every message it accepts is one JSON line on stdout; it prints
``hitchsmtp: listening on HOST:PORT`` once bound. It runs until it is killed.
"""

import signal
import sys
from typing import List, Optional

from . import _native

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    """Serve until killed; the exit code of a failure to start."""
    # The server runs in Rust without the GIL, where Python's own SIGINT handler would only
    # set a flag nobody reads: Ctrl-C (and SIGTERM) must end the process as they end the binary.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return _native.smtp_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
