"""The exceptions of hitchserve.

Every error the engine reports is a :class:`ServiceError`; its message is the engine's, word for
word: which service, what happened, its last log lines, what to do. Attributes:

* ``service`` -- the service it is about (or ``None``),
* ``last_lines`` -- the last log lines it carries (oldest first),
* ``kind`` -- the engine's name for it (``"ExitedBeforeReady"``, ``"WaitTimeout"``, ...).

Where the engine's advice names its Rust API (``Service::directory``), the message names the
Python argument instead (``Service(directory=...)``); the rest is word for word.

A Python exception raised by your own code (a ``log_line_ready_checker``, a ``setup`` or
``poststart`` hook, a ``tail.until`` predicate) is raised as itself, not wrapped.
"""

from typing import List, Optional, Tuple

__all__ = [
    "ServiceError",
    "DefinitionError",
    "StartupError",
    "StartupTimeout",
    "ServiceExited",
    "LogTimeout",
    "LogEnded",
    "SubcommandFailed",
    "NotRunning",
    "NoSuchService",
    "NoSuchProcess",
    "TimeTravelError",
    "SharedBundleError",
]


class ServiceError(Exception):
    """Anything hitchserve reports about a bundle or its services."""

    service: Optional[str] = None
    last_lines: List[str] = []
    kind: Optional[str] = None

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DefinitionError(ServiceError):
    """A bad definition (unknown program, missing directory, unknown need, a needs cycle, a
    duplicate or invalid name...): found before anything starts."""


class StartupError(ServiceError):
    """A service failed to start: it exited before it was ready, its hook failed, or it could
    not be spawned. Everything already started has been stopped."""

    returncode: Optional[int] = None
    status: Optional[str] = None


class StartupTimeout(StartupError, TimeoutError):
    """Not every service was ready within the bundle's ``startup_timeout``."""


class ServiceExited(ServiceError):
    """A service that was ready has exited on its own or by ``kill()`` (reported by
    ``check()``, the next time travel, signal or ``shutdown()``); with a ``restart`` policy,
    once the policy gave up. An exit by ``stop()`` is expected: not reported."""

    returncode: Optional[int] = None
    status: Optional[str] = None


class ExitedDuringStartup(ServiceExited, StartupError):
    """A service that was ready exited while ``startup()`` still waited for others: the
    startup failed (everything started has been stopped) because a service exited — so both
    a :class:`StartupError` and a :class:`ServiceExited`."""


class LogTimeout(ServiceError, TimeoutError):
    """A ``tail.until`` / ``until_json`` wait ran out of time."""


class LogEnded(ServiceError):
    """The service's output ended (it exited, or the bundle stopped) while a wait on its logs
    was pending."""


class SubcommandFailed(ServiceError):
    """A sub-command exited with a failure."""

    returncode: Optional[int] = None
    status: Optional[str] = None


class NotRunning(ServiceError):
    """Something that needs running services was asked before ``startup()`` (or of a service
    that is not running)."""


class NoSuchService(ServiceError, KeyError, IndexError):
    """No service of that name in the bundle. A ``KeyError`` (the bundle is a dict of
    services), and an ``IndexError`` as hitchserve 0.5.x raised for it."""


class NoSuchProcess(ServiceError):
    """The process has ended."""


class TimeTravelError(ServiceError):
    """Time travel is off for this bundle, or the moment is out of range."""


class SharedBundleError(ServiceError):
    """A shared bundle (:class:`hitchserve.SharedBundle`) could not be started, attached to
    or asked: its definition changed while others hold it, it stopped, a time travel was
    refused while other processes hold it... The message says which and what to do."""


#: The engine's advice in Rust terms, and the same in this package's terms.
_RUST_TO_PYTHON: Tuple[Tuple[str, str], ...] = (
    ("Bundle::startup_timeout", "ServiceBundle(startup_timeout=...)"),
    ("Bundle::without_time_travel()", "ServiceBundle(time_travel=False)"),
    ("Bundle::without_time_travel", "ServiceBundle(time_travel=False)"),
    ("Service::new", "Service(command=[...])"),
    ("Service::directory", "Service(directory=...)"),
    ("Service::no_libfaketime()", "Service(no_libfaketime=True)"),
    ('Service::port("NAME")', 'Service(ports=["NAME"])'),
    ("Service::one_shot()", "Service(one_shot=True)"),
    ("remove its `user(..)`", "remove its `user=`"),
    ("(`user(..)`)", "(`user=`)"),
    ("Postgres::bin_dir", "Postgres(bin_dir=...)"),
    ("Bundle::new", "ServiceBundle(project_directory=...)"),
    ("Ready::file", "ready_file"),
)


def _pythonic(message: str) -> str:
    """The engine's message with its advice in Python terms (called by the native module)."""
    for rust, python in _RUST_TO_PYTHON:
        message = message.replace(rust, python)
    return message
