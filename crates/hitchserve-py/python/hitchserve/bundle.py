"""``ServiceBundle``: named services started, watched, time-travelled and stopped together.

A thin shape over the engine's ``Bundle`` (``hitchserve._native.NativeBundle``): startup,
readiness, logs, time travel, kernels and shutdown all happen in Rust.
"""

import atexit
import datetime as _dt
import os
import sys
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from . import _native
from .errors import DefinitionError, NoSuchService, TimeTravelError
from .logs import Logs, _checked_timeout
from .service import PathLike, Service, _name_of

__all__ = ["ServiceBundle"]

# Bundles started and not yet shut down: stopped the usual way when the interpreter exits
# (a script or an IPython session that ends without `shutdown()`, a session fixture that
# returned its bundle). Left to the engine's guardian, their services would get SIGKILL
# when this process ends, with no chance to flush or checkpoint.
_LEFT_RUNNING: "weakref.WeakSet[ServiceBundle]" = weakref.WeakSet()


@atexit.register
def _stop_bundles_left_running() -> None:
    for bundle in list(_LEFT_RUNNING):
        try:
            bundle.shutdown()
        except BaseException as e:  # noqa: BLE001 - at exit, say it and go on to the next
            print(f"hitchserve: stopping a bundle left running at exit: {e!r}", file=sys.stderr)


class ServiceBundle:
    """Services that start, run and stop together.

    ``project_directory`` is where services run unless told otherwise (and where the run's
    logs go: ``.hitchserve/runs/<run>/logs/all.log``); ``startup_timeout`` bounds the whole
    startup, ``shutdown_timeout`` how long services get to stop before SIGKILL. The 0.5.x
    keywords ``hitch_dir`` (ignored) and ``quiet`` (start with the console muted) are
    accepted so existing code runs unchanged.

    Use it like a dict of services: ``bundle["Django"] = Service(...)``, then
    ``bundle.startup()``, ``bundle["Django"].logs``, ``bundle.shutdown()`` (or a ``with``
    block, which shuts down at its end).
    """

    def __init__(
        self,
        project_directory: Optional[PathLike] = None,
        startup_timeout: float = 15.0,
        shutdown_timeout: float = 5.0,
        hitch_dir: Optional[PathLike] = None,
        quiet: bool = False,
        *,
        time_travel: bool = True,
        log_memory_limit: Optional[int] = None,
    ) -> None:
        if project_directory is None:
            project_directory = os.getcwd()
        # Made absolute now, as hitchserve 0.5.x did: an `os.chdir` before `startup()` does
        # not move the services.
        self.project_directory = os.path.abspath(os.fspath(project_directory))
        self.startup_timeout = _checked_timeout("startup_timeout", startup_timeout)
        self.shutdown_timeout = _checked_timeout("shutdown_timeout", shutdown_timeout)
        self.hitch_dir = hitch_dir
        if log_memory_limit is not None and (
            isinstance(log_memory_limit, bool)
            or not isinstance(log_memory_limit, int)
            or not 0 <= log_memory_limit < 2**64
        ):
            raise ValueError(
                f"log_memory_limit must be a number of bytes, 0 or more, not {log_memory_limit!r}"
            )
        self._native = _native.NativeBundle(
            self.project_directory,
            self.startup_timeout,
            self.shutdown_timeout,
            time_travel,
            log_memory_limit,
        )
        self._services: Dict[str, Service] = {}
        self._started = False
        self._added = False
        # The last startup() was refused for its definitions: nothing started.
        self._redefinable = False
        # `shutdown()` was called: its services are free for another bundle.
        self._shut_down = False
        if quiet:
            self._native.start_interactive_mode()

    # -- the services, as a dict ----------------------------------------------------------

    def __setitem__(self, name: str, service: Service) -> None:
        if not isinstance(name, str):
            raise TypeError(f"service names are strings, not {type(name).__name__}: {name!r}")
        if not isinstance(service, Service):
            raise TypeError(f"bundle[{name!r}] must be a hitchserve.Service, not {type(service).__name__}")
        # After a startup refused for its definitions (nothing started), what was missing
        # may still be added; what was defined stays as it was.
        if self._added and (not self._redefinable or name in self._services):
            if self._redefinable:
                raise DefinitionError(
                    f"startup() was refused for its definitions, and `{name}` was given to it "
                    "already: add what was missing, or make a new ServiceBundle to change a "
                    "service"
                )
            raise DefinitionError(
                "the bundle was already started: define every service before calling startup"
            )
        if service._bundle is not None and service._bundle is not self:
            if not service._bundle._shut_down:
                raise DefinitionError(
                    f"this service is already in another bundle as {service.name!r}, which has "
                    "not been shut down: shut that one down first, or give this bundle a "
                    "Service of its own"
                )
            # A definition kept for many tests (a module-level Service): the bundle it was
            # in is over; from now on it stands for its service in this one.
            service._bundle = None
            service._native_handle = None
        if service._bundle is self and service.name != name:
            # One object can't be two services: each name would act on the other's process.
            raise DefinitionError(
                f"this Service is already in the bundle as {service.name!r}: give {name!r} a "
                "Service of its own"
            )
        # Like a dict, a name given again is replaced; the Service it had is free again.
        replaced = self._services.get(name)
        if replaced is not None and replaced is not service:
            replaced._bundle = None
        if self._added:
            before = service.name
            service.name = name
            try:
                self._native.add(name, service._definition())
            except BaseException:
                service.name = before
                raise
        service.name = name
        service._bundle = self
        self._services[name] = service

    def __getitem__(self, name: str) -> Service:
        try:
            return self._services[name]
        except KeyError:
            known = ", ".join(f"`{n}`" for n in self._services) or "none yet"
            err = NoSuchService(f"no service `{name}` in this bundle (it has: {known})")
            err.service = name
            raise err from None

    def __delitem__(self, name: str) -> None:
        if self._added:
            raise DefinitionError("services can't be removed from a started bundle")
        self[name]._bundle = None
        del self._services[name]

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def __iter__(self) -> Iterator[str]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    def _ipython_key_completions_(self) -> List[str]:
        # IPython completes `bundle["Dj<TAB>` from these.
        return list(self._services)

    def keys(self) -> List[str]:
        return list(self._services)

    def values(self) -> List[Service]:
        return list(self._services.values())

    def items(self) -> List[Tuple[str, Service]]:
        return list(self._services.items())

    # -- starting and stopping ------------------------------------------------------------

    def startup(self, interactive: bool = False) -> None:
        """Start every service, each once all it needs is ready, and wait until all are.

        ``interactive=False`` (for tests) prints the logs as they come;
        ``interactive=True`` (in IPython) leaves the console alone. On failure everything
        already started is stopped and a :class:`StartupError` (or the exception a hook or
        readiness check raised) says which service and why — for a service that was ready
        and exited meanwhile, an :class:`ExitedDuringStartup` (also a :class:`ServiceExited`).
        Ctrl-C stops it too.
        """
        if interactive:
            self._native.start_interactive_mode()
        if not self._added:
            definitions = [(name, svc._definition()) for name, svc in self._services.items()]
            self._added = True
            for name, definition in definitions:
                self._native.add(name, definition)
        _LEFT_RUNNING.add(self)
        try:
            self._native.startup()
        except DefinitionError:
            # (Not a second startup() of a running bundle: that is refused the same way.)
            self._redefinable = not self._started
            raise
        self._redefinable = False
        self._started = True

    def shutdown(self) -> None:
        """Stop every service (stop signal, then SIGKILL after ``shutdown_timeout``).
        Raises :class:`ServiceExited` for a crash after startup not reported yet. Ctrl-C
        cuts the wait short: what is left gets SIGKILL at once, then ``KeyboardInterrupt``
        is raised."""
        try:
            self._native.shutdown()
        finally:
            self._shut_down = True
            _LEFT_RUNNING.discard(self)

    def check(self) -> None:
        """Raise :class:`ServiceExited` if any service exited after it was ready (every time
        it is called; once it has, ``shutdown()`` doesn't raise that crash again)."""
        self._native.check()

    def wait_until_ready(self, service: Union[str, Service]) -> None:
        """Wait until ``service`` (a name or the service) is ready: after its ``start()``,
        ``restart()`` or a restart by its ``restart`` policy, within ``startup_timeout``.
        Raises as ``startup()`` does if it exits or fails first. Ctrl-C stops the wait."""
        self._native.wait_until_ready(_name_of(service))

    def __enter__(self) -> "ServiceBundle":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.shutdown()
        except Exception:
            if exc_type is None:
                raise

    # -- the console ----------------------------------------------------------------------

    def log(self, message: Any) -> None:
        """Print a message among the service lines (``[Hitch] message``) and store it (printed
        in interactive mode too: you asked for it)."""
        _print(self._native.log(str(message)))

    def warn(self, message: Any) -> None:
        """Print a warning among the service lines and store it (in interactive mode too)."""
        _print(self._native.warn(str(message)))

    def start_interactive_mode(self) -> None:
        """Stop printing log lines (they are still stored), e.g. to use IPython."""
        self._native.start_interactive_mode()

    def stop_interactive_mode(self) -> None:
        """Print log lines again."""
        self._native.stop_interactive_mode()

    @property
    def interactive(self) -> bool:
        return self._native.is_interactive()

    @property
    def logs(self) -> Logs:
        """Every line of every service, and the bundle's own."""
        return Logs(self._native.logs(), "bundle.logs")

    @property
    def run_directory(self) -> Optional[str]:
        """This run's directory (``.hitchserve/runs/<run>``), once started."""
        path = self._native.run_dir()
        return os.fspath(path) if path is not None else None

    @property
    def all_log(self) -> Optional[str]:
        """The path of this run's ``all.log`` (every line of every service), once started."""
        run = self.run_directory
        return os.path.join(run, "logs", "all.log") if run else None

    def port(self, service: str, name: str) -> int:
        """The port reserved for ``service`` as ``name`` (see ``Service(ports=[...])``)."""
        return self._native.port(service, name)

    def pstree(self) -> str:
        """Every running service's process tree, with memory and CPU time."""
        return self._native.pstree()

    def timeline(self) -> str:
        """When each service was set up, started and ready, as a text chart."""
        return self._native.timeline()

    # -- time travel ----------------------------------------------------------------------

    def time_travel(
        self,
        datetime: Union[_dt.datetime, _dt.timedelta, None] = None,
        timedelta: Optional[_dt.timedelta] = None,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
    ) -> None:
        """Move every service's clock: to ``datetime`` (naive means local time), or by
        ``timedelta`` plus ``days``/``hours``/``minutes``/``seconds`` (negative goes back).
        The jump is logged as where the clock now is, from real time ("Time traveling to 2
        days from now (2026-12-05 21:01:06)" after two jumps of a day, the moment in local
        time), in interactive mode too.
        A ``timedelta`` given first, ``bundle.time_travel(timedelta(days=1))``, is a delta;
        with ``datetime``, the deltas are added to it. A crash not reported yet is raised
        (:class:`ServiceExited`) once the jump is made: the clock has moved all the same."""
        to_moment, micros = _travel_micros(datetime, timedelta, seconds, minutes, hours, days)
        if to_moment:
            _print(self._native.time_travel_to(micros))
        else:
            _print(self._native.time_travel_by(micros))

    def now(self) -> _dt.datetime:
        """What time the services think it is (local time, naive, as ``datetime.now()``)."""
        return _from_micros(self._native.now())

    # -- IPython kernels ------------------------------------------------------------------

    def wait_for_kernel(self, service_name: str, timeout: Optional[float] = None) -> str:
        """Wait for ``service_name`` to embed an IPython kernel
        (``IPython.embed_kernel()``); the kernel's connection file, for ``jupyter_client``."""
        if timeout is None:
            timeout = self.startup_timeout
        return os.fspath(self._native.wait_for_kernel(service_name, float(timeout)))

    def connect_to_kernel(self, service_name: str) -> None:
        """Wait for ``service_name`` to embed an IPython kernel, then hand the terminal to
        ``jupyter console`` on it (logs muted meanwhile)."""
        self._native.connect_to_kernel(service_name)

    def __repr__(self) -> str:
        if self._native.is_starting():
            state = "starting"
        elif self._started:
            state = f"started, run {self.run_directory}"
        else:
            state = "not started"
        return f"<ServiceBundle {self.project_directory!r} {list(self._services)} {state}>"


def _print(said: List[str]) -> None:
    # What the engine logged for a command given in interactive mode (the console is muted).
    for line in said:
        print(line, flush=True)


def _travel_micros(
    datetime: Union[_dt.datetime, _dt.timedelta, None],
    timedelta: Optional[_dt.timedelta],
    seconds: float,
    minutes: float,
    hours: float,
    days: float,
) -> Tuple[bool, int]:
    """``time_travel``'s arguments, checked, as the engine takes them: whether to travel to a
    moment (``datetime`` plus the deltas; a ``timedelta`` given first is a delta), else by a
    delta, and that moment or delta in microseconds. One too far away is a
    :class:`TimeTravelError`."""
    try:
        if isinstance(datetime, _dt.timedelta):
            timedelta = datetime if timedelta is None else _check_delta(timedelta) + datetime
            datetime = None
        if datetime is not None and not isinstance(datetime, _dt.datetime):
            raise TypeError(
                "time_travel(datetime=...) takes a datetime.datetime (or, first, a "
                f"datetime.timedelta), not {type(datetime).__name__}: {datetime!r}"
            )
        amounts = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
        for name, amount in amounts.items():
            try:
                _dt.timedelta(**{name: amount})
            except TypeError:
                raise TypeError(f"time_travel({name}=...) takes a number, not {amount!r}") from None
        delta = _dt.timedelta(**amounts)
        if timedelta is not None:
            delta += _check_delta(timedelta)
        moment = None if datetime is None else datetime + delta
        micros = _micros(moment) if moment is not None else _delta_micros(delta)
        if not -(2**63) <= micros < 2**63:
            raise OverflowError(micros)
    except (OverflowError, ValueError) as e:
        if isinstance(e, ValueError) and "NaN" in str(e):
            raise ValueError("time_travel: a NaN is no amount of time") from None
        raise TimeTravelError(
            "that moment is too far from now to travel to (at most about 292 years either way)"
        ) from None
    return moment is not None, micros


def _check_delta(delta: Any) -> _dt.timedelta:
    if not isinstance(delta, _dt.timedelta):
        raise TypeError(
            f"time_travel(timedelta=...) takes a datetime.timedelta, not {type(delta).__name__}: {delta!r}"
        )
    return delta


def _micros(moment: _dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time
    delta = moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return _delta_micros(delta)


def _delta_micros(delta: _dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> _dt.datetime:
    aware = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=us)
    return aware.astimezone().replace(tzinfo=None)
