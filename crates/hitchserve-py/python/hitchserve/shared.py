"""A bundle shared by every process of a test run: :class:`SharedBundle`.

A test run is often many processes (pytest-xdist workers, CI shards, another language's
tests beside Python's); a :class:`~hitchserve.ServiceBundle` is started once per process. A
shared bundle is started once for all of them, from a ``hitchserve.toml`` (the
``hitchserve`` command's file), in the background: the first process that asks starts it,
the others attach, each holds a *lease* until it releases it or dies (SIGKILL too). Once no
lease has been held for the idle time (10 s unless ``idle=`` says otherwise) the bundle
stops, and every process it started with it. Racing first users start one bundle; a
bundle started from another definition is replaced if nobody holds it, else attaching
raises :class:`~hitchserve.SharedBundleError` naming what changed::

    from hitchserve import SharedBundle

    with SharedBundle("tests/hitchserve.toml") as shared:
        port = shared.service("Web").port("http")
        shared.service("Web").tail().until("GET /health")

Each :class:`SharedBundle` is its own view: its :meth:`SharedBundle.logs`, tails and
:meth:`SharedBundle.report` see only the lines written since it attached (an earlier test's
don't count; a test running at the same time in another process writes into the same
window); the whole run's are in :attr:`SharedBundle.all_log`. Time travel moves the clock of
every holder, so it is refused while another process holds the bundle.

The bundle runs as ``python -m hitchserve.cli`` (this package's ``hitchserve`` command),
with this Python. This module owns the Pythonic surface only; leases, the start-or-attach
decision and the logs are the engine's (``hitchserve._native.NativeShared``).
"""

import datetime as _dt
import os
import subprocess
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Union

from . import _native
from .bundle import _from_micros, _travel_micros
from .errors import ServiceError, SubcommandFailed

__all__ = ["SharedBundle", "SharedService", "SharedTail", "SharedLine"]

#: Where this package is imported from: the command runs *this* hitchserve, however it was
#: found (``sys.path`` changed by pytest's ``pythonpath``, a conftest, a zipapp), never
#: another one installed for the same Python.
_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How to run the ``hitchserve`` command (this package's: :mod:`hitchserve.cli`), as the
#: program and its first arguments: it starts the bundle, and runs it. Not ``-m``: that puts
#: the working directory (the project's) first on ``sys.path``, where a ``signal.py`` of the
#: project would shadow the standard library's.
RELAUNCH: List[str] = [
    sys.executable,
    "-c",
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    f"sys.path.insert(0, {_HOME!r}); "
    "import hitchserve.cli; hitchserve.cli.main()",
]

#: How long a tail waits unless told.
DEFAULT_TIMEOUT = 10.0


class SharedLine(NamedTuple):
    """One log line of a shared bundle."""

    #: The service that wrote it (``""`` for the bundle's own lines).
    service: str
    #: The line as written.
    text: str
    #: The line as the console shows it: ``[   Web] text``.
    console: str
    #: Its place in the bundle's logs (increasing).
    seq: int
    #: Which of its service's processes wrote it (1 until it is started again).
    incarnation: int

    def __str__(self) -> str:
        return self.text


class SharedBundle:
    """A lease on the bundle defined in ``file`` (a ``hitchserve.toml``), shared by every
    process that attaches to it: starts it unless it runs, returns once every service is
    ready. ``idle``: seconds the bundle runs on with no lease held (default 10; used by the
    process that starts it). Ctrl-C while it starts raises ``KeyboardInterrupt``.

    Release it with :meth:`release` or a ``with`` block (or let the process end: a lease
    ends with its process)."""

    def __init__(self, file: Union[str, "os.PathLike[str]"], idle: Optional[float] = None) -> None:
        self.file = os.path.abspath(os.fspath(file))
        # Until attached (a repr in a traceback of a failed attach must not fail itself).
        self._native: Any = None
        program, *args = RELAUNCH
        self._native = _native.NativeShared(
            self.file, program, args, None if idle is None else float(idle)
        )

    def view(self) -> "SharedBundle":
        """Another lease on the same bundle for this process, taken over its socket (no
        command is run, so it costs a fraction of an attach): a test's own view — its lines,
        tails and report start now, and a time travel made through it is undone when it is
        released — while this lease (the session's) keeps the bundle."""
        view = SharedBundle.__new__(SharedBundle)
        view.file = self.file
        view._native = self._native.view()
        return view

    # -- what it said when it attached ------------------------------------------------------

    @property
    def project_directory(self) -> str:
        """The project directory (the file's)."""
        return os.fspath(self._native.project_dir)

    @property
    def all_log(self) -> Optional[str]:
        """The run's ``all.log``: every line of every service, of every holder's time."""
        path = self._native.all_log
        return None if path is None else os.fspath(path)

    @property
    def started_it(self) -> bool:
        """Whether this attach started the bundle (else it was running already)."""
        return self._native.started_it

    @property
    def lease(self) -> int:
        """This holder's lease (``hitchserve release --lease N`` ends it)."""
        return self._native.lease

    @property
    def holders(self) -> List[int]:
        """The pids that hold a lease now, one per lease (this one's included)."""
        return self._native.holders()

    # -- the services ---------------------------------------------------------------------

    def service(self, name: str) -> "SharedService":
        """A service of the bundle; :class:`~hitchserve.NoSuchService` if it has none so
        named."""
        self._native.check_service(name)
        return SharedService(self, name)

    def __getitem__(self, name: str) -> "SharedService":
        return self.service(name)

    def logs(self) -> List[SharedLine]:
        """This holder's lines: every line of every service written since it attached."""
        return [SharedLine(*line) for line in self._native.logs()]

    def report(self, n: int = 40) -> str:
        """A failure report: this holder's last ``n`` lines, and the path of the run's
        ``all.log``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"report(n): n is a number of lines, 0 or more, not {n!r}")
        return self._native.report(n)

    # -- the clock ------------------------------------------------------------------------

    def now(self) -> _dt.datetime:
        """What time the services think it is (local time, naive, as ``datetime.now()``)."""
        return _from_micros(self._native.now())

    def time_travel(
        self,
        datetime: Union[_dt.datetime, _dt.timedelta, None] = None,
        timedelta: Optional[_dt.timedelta] = None,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
    ) -> None:
        """Move every service's clock, as :meth:`hitchserve.ServiceBundle.time_travel` does.
        The clock is every holder's: refused (:class:`~hitchserve.SharedBundleError`) while
        another process holds the bundle."""
        to_moment, micros = _travel_micros(datetime, timedelta, seconds, minutes, hours, days)
        if to_moment:
            self._native.time_travel_to(micros)
        else:
            self._native.time_travel_by(micros)

    # -- the lease ------------------------------------------------------------------------

    def release(self) -> None:
        """End this lease now (again: nothing). The bundle stops once no lease has been
        held for its idle time."""
        self._native.release()

    def __enter__(self) -> "SharedBundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.release()
        except ServiceError:
            if exc[0] is None:
                raise
            # The block's own exception says more than a bundle gone meanwhile (its lease
            # went with it).

    def __repr__(self) -> str:
        if self._native is None:
            return f"<SharedBundle {self.file!r} not attached>"
        state = "released" if self._native.released() else f"lease {self.lease}"
        return f"<SharedBundle {self.file!r} {state}>"


class SharedService:
    """One service of a :class:`SharedBundle` (each property asks the bundle)."""

    def __init__(self, bundle: SharedBundle, name: str) -> None:
        self.bundle = bundle
        self.name = name

    @property
    def pid(self) -> Optional[int]:
        """The pid of its main process, if it runs."""
        return self.bundle._native.pid(self.name)

    @property
    def state(self) -> str:
        """``ready``, ``starting``, ``stopped``, ``crashed``... (as ``hitchserve status``)."""
        return self.bundle._native.state(self.name)

    def port(self, name: str) -> int:
        """The port reserved for it under ``name``."""
        return self.bundle._native.port(self.name, name)

    @property
    def environment(self) -> Dict[str, str]:
        """Its environment: the one its process got (ports, fake time and all)."""
        return dict(self.bundle._native.environment(self.name))

    def logs(self) -> List[SharedLine]:
        """Its lines written since this holder attached."""
        return [SharedLine(*line) for line in self.bundle._native.logs(self.name)]

    def tail(self) -> "SharedTail":
        """A cursor on its lines from the moment this holder attached: each wait returns the
        next line that matches, after the one found before."""
        return SharedTail(self, self.bundle._native.start_position(self.name))

    def run(
        self, *args: Any, input: Union[None, str, bytes] = None, check: bool = True
    ) -> "subprocess.CompletedProcess[bytes]":
        """Run a command in its environment, directory and fake time, as its user (as
        ``hitchserve exec`` does); its output captured. Raises
        :class:`~hitchserve.SubcommandFailed` if it fails, unless ``check=False``."""
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
        data = input.encode() if isinstance(input, str) else input
        # `code` as `subprocess` has it: minus the signal that ended it, if one did.
        code, out, err = self.bundle._native.run(self.name, argv, data)
        result = subprocess.CompletedProcess(argv, code, out, err)
        if check and code != 0:
            said = err.decode(errors="replace").strip().splitlines()[-10:]
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            failed = SubcommandFailed(
                f"service `{self.name}`: `{' '.join(argv)}` {how}"
                + "".join(f"\n  {line}" for line in said)
            )
            failed.service = self.name
            failed.returncode = code
            failed.last_lines = said
            failed.kind = "SubcommandFailed"
            raise failed
        return result

    def __repr__(self) -> str:
        return f"<SharedService {self.name!r}>"


class SharedTail:
    """A cursor on a shared service's lines (see :meth:`SharedService.tail`)."""

    def __init__(self, service: SharedService, position: int) -> None:
        self.service = service
        #: The ``seq`` of the last line passed: a wait finds only later ones.
        self.position = position

    def until(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> SharedLine:
        """Wait up to ``timeout`` seconds for a line matching the regular expression
        ``pattern``; :class:`~hitchserve.LogTimeout` if none comes,
        :class:`~hitchserve.DefinitionError` at once if ``pattern`` doesn't parse."""
        _check_text("until", pattern, "a regular expression: until(r'GET /health')")
        native = self.service.bundle._native
        line = SharedLine(*native.until(self.service.name, self.position, pattern, timeout))
        self.position = line.seq
        return line

    def until_json(self, expr: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Wait up to ``timeout`` seconds for a JSON line matching ``field=value`` (or having
        ``field``; a dotted field looks inside objects), as ``hitchserve logs --until-json``;
        the line's value."""
        _check_text("until_json", expr, "a `field=value` match: until_json('event=sent')")
        native = self.service.bundle._native
        value, self.position = native.until_json(self.service.name, self.position, expr, timeout)
        return value


def _check_text(call: str, value: Any, example: str) -> None:
    """A shared bundle matches lines in its own process, from text: a function (as a
    ServiceBundle's tails take) is refused, saying what to give instead."""
    if not isinstance(value, str):
        raise TypeError(
            f"a shared bundle's {call}() matches in the bundle's own process, so it takes "
            f"{example}, not a {type(value).__name__}"
        )
