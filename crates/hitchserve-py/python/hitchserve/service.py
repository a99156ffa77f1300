"""Services: how one is defined (``Service(command=..., log_line_ready_checker=...)``, or a
subclass with ``setup``/``poststart``), and what a started one gives (logs, pid, a
``psutil.Process``, sub-commands, and the faults a test injects: ``stop``, ``start``,
``restart``, ``pause``, ``resume``, ``kill``).

A definition becomes the engine's ``Service`` at ``startup()``; hooks and readiness checks
are Python callables the engine calls (on its own threads, taking the GIL for the call).
"""

import copy
import datetime as _dt
import os
import shlex
import subprocess
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import psutil

from . import _native
from .errors import DefinitionError, NotRunning
from .logs import Logs, _checked_timeout

__all__ = ["Service", "Subcommand"]

PathLike = Union[str, "os.PathLike[str]"]


class Subcommand:
    """A command run like its service: its environment, directory and fake time."""

    def __init__(self, native: "_native.Subcommand", ctx: Any = None) -> None:
        self._native = native
        self._ctx = ctx

    @property
    def argv(self) -> List[str]:
        return [os.fsdecode(a) for a in self._native.argv()]

    def with_args(self, *args: Any) -> "Subcommand":
        """A copy with more arguments."""
        return Subcommand(self._native.args([str(a) for a in args]), self._ctx)

    def with_env(self, **env: Any) -> "Subcommand":
        """A copy with these environment variables set (over the service's)."""
        native = self._native
        for k, v in env.items():
            native = native.env(k, str(v))
        return Subcommand(native, self._ctx)

    def run(
        self,
        ignore_errors: bool = False,
        stdin: Union[None, str, bytes] = None,
        check_output: bool = False,
    ) -> Optional[str]:
        """Run it, its output going where the test's goes (inside a hook: stored under the
        hook's label). Raises :class:`SubcommandFailed` if it fails, unless
        ``ignore_errors``. With ``check_output``, capture stdout and return it as text."""
        native = self._stdin(stdin)
        if check_output:
            out = self._output(native, check=not ignore_errors)
            return out.stdout.decode(errors="replace")
        if self._ctx is not None:
            try:
                self._ctx.run_command(native)
            except Exception:
                if not ignore_errors:
                    raise
            return None
        try:
            native.run()
        except Exception:
            if not ignore_errors:
                raise
        return None

    def output(self, stdin: Union[None, str, bytes] = None) -> "subprocess.CompletedProcess[bytes]":
        """Run it and capture its output, whatever its exit status."""
        return self._output(self._stdin(stdin), check=False)

    def checked_output(self, stdin: Union[None, str, bytes] = None) -> "subprocess.CompletedProcess[bytes]":
        """Run it and capture its output; raises :class:`SubcommandFailed` (with its stderr)
        unless it exits 0."""
        return self._output(self._stdin(stdin), check=True)

    def _stdin(self, stdin: Union[None, str, bytes]) -> "_native.Subcommand":
        if stdin is None:
            return self._native
        data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        return self._native.stdin(data)

    def _output(self, native: "_native.Subcommand", check: bool) -> "subprocess.CompletedProcess[bytes]":
        # `returncode` as `subprocess` has it: minus the signal that ended it, if one did.
        status, returncode, out, err = native.output(check)
        return subprocess.CompletedProcess(self.argv, returncode, bytes(out), bytes(err))

    def __repr__(self) -> str:
        return f"Subcommand({self.argv!r})"


def _checked_tcp(value: Union[None, int, str]) -> Optional[str]:
    """``ready_tcp`` as the engine takes it: ``"host:port"``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"ready_tcp must be a port number or 'host:port', not a {type(value).__name__}: "
            f"e.g. ready_tcp='127.0.0.1:{{port.http}}'"
        )
    if isinstance(value, int):
        if not 0 < value < 65536:
            raise ValueError(f"ready_tcp must be a port from 1 to 65535, not {value}")
        return f"127.0.0.1:{value}"
    if ":" not in value:
        raise ValueError(
            f"ready_tcp must be 'host:port' (or a port number), not {value!r}: "
            f"e.g. ready_tcp='127.0.0.1:{{port.http}}'"
        )
    return value


class Service:
    """A service to run in a :class:`~hitchserve.ServiceBundle`.

    ``command`` is the argv to run (never a shell string); ``log_line_ready_checker`` is
    called with each line of stdout and stderr until it returns true (without one, the
    service is ready once started). ``directory`` is where it runs (relative to the
    bundle's project directory), ``env_vars`` its extra environment (values converted with
    ``str()``), ``needs`` the services (objects or names) that must be ready first.
    ``no_libfaketime=True`` keeps it on real time.

    Beyond the original's arguments: ``ports`` (names of ports to reserve, used as
    ``{port.NAME}`` in the command and environment), ``needs_started``,
    ``needs_completed``, ``stop_signal`` (e.g. ``"SIGINT"``), ``user`` and ``one_shot``.

    Readiness probes, for a service that says nothing when it is ready (memcached, nginx):
    ``ready_tcp`` (a port number on 127.0.0.1, or ``"host:port"``: ready once it accepts a
    connection), ``ready_http`` (a ``http://`` URL: ready once a GET answers with a status
    below 500) and ``ready_file`` (a path: ready once this start has made or written it).
    Each takes templates (``"127.0.0.1:{port.http}"``); with ``log_line_ready_checker``
    too, all must pass.

    ``restart`` is what happens when it exits unasked: ``"never"`` (the default: an exit
    before it is ready fails ``startup()``, one after is reported by ``check()``, the next
    time travel or ``shutdown()``, which is what a test wants), ``"on-failure"`` (after an
    exit with a non-zero status or by a signal) or ``"always"``, at most ``max_restarts``
    times (required with those two), the first after ``restart_backoff`` seconds (default
    0.1; a ``timedelta`` works too), doubled after each up to 30 s. A policy also restarts a
    service that exits before it is ready (a server that needs a moment for what it
    connects to): ``startup()`` waits for its restarts, within ``startup_timeout``, whose
    error then says it was waiting for a restart. Each restart is logged and keeps its
    ports, environment and the bundle's fake time; its setup hook does not run again;
    services that need it are not restarted. Past ``max_restarts`` the exit is reported like
    any crash. Kept as the attributes ``restart_policy``, ``max_restarts`` and
    ``restart_backoff``.

    Subclass it and override ``setup(self)`` (before the service starts) or
    ``poststart(self)`` (once it is ready); inside them, ``self.log(...)``,
    ``self.run(...)`` and ``self.subcommand(...)`` work, their output stored under the
    hook's label.
    """

    def __init__(
        self,
        command: Optional[Sequence[Any]] = None,
        log_line_ready_checker: Optional[Callable[[str], Any]] = None,
        directory: Optional[PathLike] = None,
        no_libfaketime: bool = False,
        env_vars: Optional[Dict[str, Any]] = None,
        needs: Optional[Iterable[Union["Service", str]]] = None,
        *,
        needs_started: Optional[Iterable[Union["Service", str]]] = None,
        needs_completed: Optional[Iterable[Union["Service", str]]] = None,
        ports: Optional[Iterable[str]] = None,
        stop_signal: Optional[Union[str, int]] = None,
        user: Optional[str] = None,
        one_shot: bool = False,
        restart: str = "never",
        max_restarts: Optional[int] = None,
        restart_backoff: Union[None, float, _dt.timedelta] = None,
        ready_tcp: Union[None, int, str] = None,
        ready_http: Optional[str] = None,
        ready_file: Optional[PathLike] = None,
    ) -> None:
        if isinstance(command, (str, bytes)):
            raise TypeError(
                f"command must be a list of arguments, not a {type(command).__name__}: "
                f"write command={_words(command)!r} (no shell runs it)"
            )
        if log_line_ready_checker is not None and not callable(log_line_ready_checker):
            raise TypeError(
                "log_line_ready_checker must be a function of a line that returns true when "
                f"the service is ready, not a {type(log_line_ready_checker).__name__}: e.g. "
                f"log_line_ready_checker=lambda line: {log_line_ready_checker!r} in line"
            )
        self.command = _checked_command(command) if command is not None else None
        self.log_line_ready_checker = log_line_ready_checker
        if directory is not None and not isinstance(directory, (str, bytes, os.PathLike)):
            raise TypeError(
                f"directory must be a path (a str or pathlib.Path), not a {type(directory).__name__}: "
                f"{directory!r}"
            )
        self.directory = directory
        self.no_libfaketime = _checked_flag("no_libfaketime", no_libfaketime)
        if env_vars is not None and not isinstance(env_vars, Mapping):
            raise TypeError(
                f"env_vars must be a dict of names to values, not a {type(env_vars).__name__}: "
                f"e.g. env_vars={{'NAME': 'value'}}"
            )
        self.env_vars = dict(env_vars or {})
        _check_env_vars(self.env_vars)
        self.needs = _checked_needs("needs", needs)
        self.needs_started = _checked_needs("needs_started", needs_started)
        self.needs_completed = _checked_needs("needs_completed", needs_completed)
        self.ports = _checked_ports(ports)
        if stop_signal is not None:
            _signal_name(stop_signal)
        self.stop_signal = stop_signal
        if user is not None and not isinstance(user, str):
            raise TypeError(f"user must be a user's name (a str), not {user!r}")
        self.user = user
        self.one_shot = _checked_flag("one_shot", one_shot)
        # Not `self.restart`: that is the method that restarts it.
        self.restart_policy = restart
        self.max_restarts = max_restarts
        self.restart_backoff = restart_backoff
        _check_restart(restart, max_restarts, restart_backoff)
        self.ready_tcp = _checked_tcp(ready_tcp)
        if ready_http is not None and not (
            isinstance(ready_http, str) and ready_http.startswith("http://")
        ):
            raise TypeError(
                f"ready_http must be a plain http:// URL (a str), not {ready_http!r}: "
                f"e.g. ready_http='http://127.0.0.1:{{port.http}}/health'"
            )
        self.ready_http = ready_http
        if ready_file is not None and not isinstance(ready_file, (str, os.PathLike)):
            raise TypeError(
                f"ready_file must be a path (a str or pathlib.Path), not a {type(ready_file).__name__}"
            )
        self.ready_file = ready_file
        self.name: Optional[str] = None
        self._bundle: Any = None
        self._ctx: Any = None
        self._native_handle: Any = None

    # -- hooks: override in a subclass ----------------------------------------------------

    def setup(self) -> None:
        """Code to run before the service starts (override it)."""

    def poststart(self) -> None:
        """Code to run once the service is ready (override it)."""

    # -- definition -----------------------------------------------------------------------

    def _base_definition(self) -> "_native.ServiceDef":
        if not self.command:
            raise DefinitionError(
                f"service {self.name!r} needs a command=[...] to run: give it the program and its "
                "arguments"
            )
        return _native.ServiceDef(self.command)

    def _overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(Service, hook)

    def _definition(self) -> "_native.ServiceDef":
        d = self._base_definition()
        if self.log_line_ready_checker is not None:
            d.ready_when(self.log_line_ready_checker)
        if self.ready_tcp is not None:
            d.probe_tcp(self.ready_tcp)
        if self.ready_http is not None:
            d.probe_http(self.ready_http)
        if self.ready_file is not None:
            d.probe_file(os.fspath(self.ready_file))
        if self.directory is not None:
            d.directory(os.fspath(self.directory))
        for key, value in _check_env_vars(self.env_vars).items():
            d.env(key, value)
        for method, names in (
            (d.needs, self.needs),
            (d.needs_started, self.needs_started),
            (d.needs_completed, self.needs_completed),
        ):
            if names:
                method([_name_of(n) for n in names])
        for port in self.ports:
            d.port(port)
        if self.stop_signal is not None:
            d.stop_signal(_signal_name(self.stop_signal))
        if self.user is not None:
            d.user(self.user)
        if self.one_shot:
            d.one_shot()
        if self.no_libfaketime:
            d.no_libfaketime()
        max_restarts, backoff = _check_restart(
            self.restart_policy, self.max_restarts, self.restart_backoff
        )
        if self.restart_policy != "never":
            d.restart(self.restart_policy, max_restarts, backoff)
        if self._overrides("setup"):
            d.set_setup(self._hook(self._setup_keeping_the_definition))
        if self._overrides("poststart"):
            d.set_poststart(self._hook(lambda: self.poststart()))
        return d

    def _setup_keeping_the_definition(self) -> None:
        """``setup()``, refusing a change it makes to what starts: the command and
        environment were fixed when ``startup()`` began (silently, they were not used)."""
        before = (list(self.command or []), dict(self.env_vars))
        self.setup()
        changed = [
            what
            for what, was, now in (
                ("command", before[0], list(self.command or [])),
                ("env_vars", before[1], dict(self.env_vars)),
            )
            if was != now
        ]
        if changed:
            raise DefinitionError(
                f"service {self.name!r}: setup() changed its {' and '.join(changed)}, which "
                "were fixed when startup() began: set them before startup() (in __init__, or "
                "on the Service before it is added), and keep setup() for work to do before "
                "it starts"
            )

    def _hook(self, method: Callable[[], Any]) -> Callable[[Any], None]:
        def call(ctx: Any) -> None:
            self._ctx = ctx
            try:
                method()
            finally:
                self._ctx = None

        return call

    # -- a started service ----------------------------------------------------------------

    def _engine(self) -> "_native.NativeBundle":
        """The native bundle this service is in."""
        if self._bundle is None:
            raise NotRunning(f"service {self.name or '(unnamed)'!r} is not in a bundle")
        native: _native.NativeBundle = self._bundle._native
        return native

    def _handle(self) -> "_native.ServiceHandle":
        if self._native_handle is None:
            self._native_handle = self._engine().service(str(self.name))
        handle: _native.ServiceHandle = self._native_handle
        return handle

    @property
    def run_directory(self) -> Optional[str]:
        """The run's directory (``.hitchserve/runs/<run>``, what ``{run}`` names), once its
        bundle's startup has begun: also in ``setup()`` and ``poststart()``."""
        if self._ctx is not None:
            return os.fspath(self._ctx.run_dir())
        if self._bundle is None:
            return None
        run: Optional[str] = self._bundle.run_directory
        return run

    @property
    def logs(self) -> Logs:
        """Its log lines (``.out``, ``.err``, ``.tail``, ``.json()``...); in ``setup()`` and
        ``poststart()`` too (a poststart that waits for a line after readiness)."""
        return Logs(self._handle().logs(), f"{self.name}.logs", self.name)

    @property
    def pid(self) -> Optional[int]:
        """The pid of its main process, while it runs (in ``poststart`` too; None in
        ``setup``: it has not started yet)."""
        if self._ctx is not None:
            pid: Optional[int] = self._ctx.pid()
            return pid
        return self._handle().pid()

    @property
    def process(self) -> psutil.Process:
        """Its main process, as a ``psutil.Process``."""
        pid = self.pid
        if pid is None:
            err = NotRunning(f"service `{self.name}` is not running")
            err.service = self.name
            raise err
        return psutil.Process(pid)

    @property
    def environment(self) -> Dict[str, str]:
        """The whole environment it was started with (fake time included)."""
        return {os.fsdecode(k): os.fsdecode(v) for k, v in self._handle().environment()}

    @property
    def working_directory(self) -> str:
        """The directory it runs in."""
        if self._ctx is not None:
            return os.fspath(self._ctx.directory())  # type: ignore[no-any-return]
        return os.fspath(self._handle().directory())

    @property
    def is_ready(self) -> bool:
        """Whether it is ready (its check passed, its poststart hook done), and not stopping."""
        return self._handle().is_ready()

    @property
    def is_stopping(self) -> bool:
        """Whether a stop, a restart (before its new start) or the bundle's shutdown is under
        way and its process has not ended yet."""
        return self._handle().is_stopping()

    @property
    def is_running(self) -> bool:
        return self._handle().is_running()

    @property
    def exit_status(self) -> Optional[str]:
        """How it ended (e.g. ``"exit code 1"``), once it has."""
        status = self._handle().exit_status()
        return status[0] if status else None

    @property
    def returncode(self) -> Optional[int]:
        """Its exit code, once it has exited with one."""
        status = self._handle().exit_status()
        return status[1] if status else None

    def wait_exit(self, timeout: float = 10.0) -> Optional[str]:
        """Wait up to ``timeout`` seconds for it to exit; how it ended, or ``None``."""
        status = self._handle().wait_exit(_checked_timeout("timeout", timeout))
        return status[0] if status else None

    def check(self) -> None:
        """Raise :class:`ServiceExited` if it exited after it was ready (every time it is
        asked); once it has, ``shutdown()`` doesn't raise that crash again."""
        self._handle().check()

    def signal(self, sig: Union[str, int]) -> None:
        """Send a signal (``"SIGHUP"``, ``signal.SIGHUP``) to its whole process group."""
        self._handle().signal(_signal_name(sig, "signal"))

    # -- faults to inject: one service at a time ------------------------------------------

    def stop(self) -> None:
        """Stop it: its stop signal to its whole process group, SIGKILL to what is left after
        the bundle's ``shutdown_timeout``; returns once it has exited and its last lines are
        stored (a ``[Hitch] Stopping ...`` line says so). Its exit is expected: no crash is
        reported. Services that need it keep running. Nothing happens if it has stopped or
        exited already (before ``startup()`` there is nothing to stop: :class:`NotRunning`).
        Ctrl-C stops the wait (the stop goes on)."""
        self._handle().stop()

    def start(self, setup: bool = False) -> None:
        """Start it again after it stopped (by :meth:`stop`, a crash or :meth:`kill`): the same
        command, environment and reserved ports, on the bundle's current fake time. Waits until
        it is ready (its ``log_line_ready_checker`` and ``poststart``) within the bundle's
        ``startup_timeout``, or raises as ``startup()`` does (:class:`StartupError`,
        :class:`StartupTimeout`, or what your checker or hook raised) and leaves nothing of
        this start running (its process stopped; not started once a slow ``setup`` hook
        returns; not restarted by its restart policy). The ``setup`` hook runs again only with
        ``setup=True``. A service that runs is left as it is. Its log goes on: lines of the new
        process have ``incarnation`` one more. Ctrl-C stops the wait (the service goes on
        starting)."""
        self._handle().start(bool(setup))

    def restart(self, setup: bool = False) -> None:
        """:meth:`stop`, then :meth:`start` (``setup=True`` runs the setup hook again)."""
        self._handle().restart(bool(setup))

    def pause(self) -> None:
        """Freeze it (SIGSTOP to its whole process group): the "hung dependency" fault. Its
        port still accepts connections, nothing answers. :meth:`resume` thaws it; stopping a
        paused service resumes it first. Raises :class:`NotRunning` if it isn't running."""
        self._handle().pause()

    def resume(self) -> None:
        """Thaw it after :meth:`pause` (SIGCONT to its whole process group)."""
        self._handle().resume()

    @property
    def is_paused(self) -> bool:
        """Whether it is paused (see :meth:`pause`)."""
        return self._handle().is_paused()

    def kill(self, signal: Union[str, int] = "SIGKILL") -> None:
        """Send ``signal`` (``"SIGKILL"``, ``signal.SIGSEGV``...) to its whole process group,
        its exit *not* expected: the "crash" fault. If it dies, that is reported as any crash
        after readiness (:class:`ServiceExited` from ``check()``, the next time travel or
        ``shutdown()``), unless its restart policy or :meth:`start` starts it again. With
        ``SIGKILL`` (the default), which nothing can catch, it returns once the service has
        exited, so :meth:`start` right after starts it again; with another signal, once the
        signal is sent (:meth:`wait_exit` waits for an exit). Ctrl-C stops the wait."""
        self._handle().kill(_signal_name(signal, "signal"))

    def wait_until_ready(self) -> None:
        """Wait until it is ready (after :meth:`start`, :meth:`restart` or a restart by its
        ``restart`` policy), within the bundle's ``startup_timeout``; raises as
        :meth:`start` does if it exits or fails first, :class:`NotRunning` if it is stopped.
        Ctrl-C stops the wait."""
        self._handle().wait_until_ready()

    @property
    def incarnation(self) -> int:
        """How many times its process has been started: 1 after ``startup()``, 2 after one
        restart (by hand or by its policy), and so on."""
        return self._handle().incarnation()

    def port(self, name: str) -> int:
        """The port reserved for it as ``name`` (see ``ports=``); also inside its ``setup``
        and ``poststart``."""
        if self._ctx is not None:
            port = self._ctx.port(str(name))
            if port is None:
                raise DefinitionError(
                    f"service {self.name!r} has no port named {name!r}: declare it with "
                    f"Service(ports=[{name!r}])"
                )
            return int(port)
        return self._engine().port(str(self.name), name)

    def subcommand(self, *args: Any) -> Subcommand:
        """A command to run in its environment, directory and fake time:
        ``service.subcommand("manage.py", "help").run()``."""
        argv = [str(a) for a in args]
        if self._ctx is not None:
            return Subcommand(self._ctx.subcommand(argv), self._ctx)
        return Subcommand(self._handle().subcommand(argv))

    def run(self, *args: Any) -> None:
        """Run a sub-command and raise if it fails (in a hook: output stored under the
        hook's label)."""
        self.subcommand(*args).run()

    def log(self, message: str) -> None:
        """Print and store a message (in a hook: under the hook's label)."""
        if self._ctx is not None:
            self._ctx.log(str(message))
        elif self._bundle is not None:
            self._bundle.log(f"{self.name}: {message}")
        else:
            print(message)

    # -- copies: the definition, not its place in a bundle --------------------------------

    #: What ties a service to the bundle it was added to: a copy starts without it.
    _BOUND = ("name", "_bundle", "_ctx", "_native_handle")

    def __copy__(self) -> "Service":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for key in self._BOUND:
            setattr(new, key, None)
        # Its own command, environment, ports and needs (a definition of its own), sharing
        # only what they hold.
        for key, value in self.__dict__.items():
            if isinstance(value, (list, dict)):
                setattr(new, key, copy.copy(value))
        return new

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Service":
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key in self._BOUND:
                value = None
            elif key in ("needs", "needs_started", "needs_completed"):
                # The services it needs are those of the bundle, not copies of them.
                value = list(value)
            else:
                value = copy.deepcopy(value, memo)
            setattr(new, key, value)
        return new

    def __repr__(self) -> str:
        name = self.name or "(unnamed)"
        if self._bundle is not None and self._bundle._started:
            try:
                handle = self._handle()
            except Exception:
                handle = None
            if handle is not None:
                pid = handle.pid()
                status = handle.exit_status()
                if status:
                    state = status[0]
                elif handle.is_stopping():
                    state = f"stopping, pid {pid}"
                elif handle.is_paused():
                    state = f"paused, pid {pid}"
                elif handle.is_ready():
                    state = f"ready, pid {pid}"
                else:
                    state = f"running, pid {pid}" if pid else "not running"
                return f"<{type(self).__name__} {name!r}: {state}>"
        return f"<{type(self).__name__} {name!r} (not started) command={self.command!r}>"


def _checked_flag(what: str, value: Any) -> bool:
    """A yes/no argument: True or False only (``"no"`` is a true string, not a no)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what}= is True or False, not a {type(value).__name__}: {value!r}")
    return value


def _checked_ports(ports: Any) -> List[str]:
    """The names of the ports to reserve: a list of strings (one string is not a list of
    its letters)."""
    if ports is None:
        return []
    if isinstance(ports, (str, bytes)):
        raise TypeError(f"ports= is a list of port names, not a string: write ports=[{ports!r}]")
    names = list(ports)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"ports=: each port's name is a non-empty string, not {name!r}")
    return names


def _check_env_vars(env_vars: Dict[str, Any]) -> Dict[str, str]:
    """``env_vars`` as the strings to set; a name that is not one is refused up front."""
    checked = {}
    for key, value in env_vars.items():
        if not isinstance(key, str):
            raise TypeError(
                f"env_vars: variable names are strings, not {type(key).__name__}: {key!r}"
            )
        if not key or "=" in key or "\0" in key:
            raise DefinitionError(
                f"env_vars: {key!r} is not an environment variable name "
                "(it must be non-empty, without '=' or NUL)"
            )
        if value is None:
            raise TypeError(
                f"env_vars: the value of {key!r} is None: give a string, or leave the variable out"
            )
        text = str(value)
        if "\0" in text:
            raise DefinitionError(f"env_vars: the value of {key!r} contains a NUL character")
        checked[key] = text
    return checked


#: The values of ``Service(restart=...)``.
RESTART_POLICIES = ("never", "on-failure", "always")


def _check_restart(
    restart: Any, max_restarts: Any, backoff: Any
) -> Tuple[int, Optional[float]]:
    """The restart policy's count and first backoff in seconds, checked; refused up front."""
    if not isinstance(restart, str):
        raise TypeError(
            f"restart= is one of {', '.join(map(repr, RESTART_POLICIES))}, not "
            f"{type(restart).__name__}: {restart!r}"
        )
    if restart not in RESTART_POLICIES:
        raise DefinitionError(
            f"restart={restart!r} is not a restart policy: use one of "
            f"{', '.join(map(repr, RESTART_POLICIES))}"
        )
    if restart == "never":
        if max_restarts is not None or backoff is not None:
            raise DefinitionError(
                "max_restarts= and restart_backoff= apply to restart='on-failure' or "
                "restart='always' only (the default, restart='never', reports the exit)"
            )
        return 0, None
    if max_restarts is None:
        raise DefinitionError(
            f"restart={restart!r} needs max_restarts=N: how many restarts at most before "
            "the exit is reported like a crash"
        )
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool):
        raise TypeError(
            f"max_restarts= is a number of restarts, not {type(max_restarts).__name__}: {max_restarts!r}"
        )
    if not 0 <= max_restarts <= 0xFFFF_FFFF:
        raise DefinitionError(f"max_restarts= is a number of restarts, 0 or more, not {max_restarts}")
    if backoff is None:
        return max_restarts, None
    if not isinstance(backoff, (int, float, _dt.timedelta)) or isinstance(backoff, bool):
        raise TypeError(
            f"restart_backoff= is in seconds (or a timedelta), not {type(backoff).__name__}: {backoff!r}"
        )
    seconds = _seconds(backoff)
    # The engine holds a duration as 64-bit seconds: refuse now what it would refuse later.
    if not 0 <= seconds < 2.0**63:
        raise DefinitionError(
            f"restart_backoff= is a duration, 0 or more seconds (less than 2**63), not {seconds}"
        )
    return max_restarts, seconds


def _name_of(need: Union[Service, str]) -> str:
    if isinstance(need, Service):
        if need.name is None:
            raise TypeError("a service in needs=[...] must be added to the bundle first")
        return need.name
    return str(need)


def _signal_name(sig: Union[str, int], what: str = "stop_signal") -> str:
    """A signal (``"SIGINT"``, ``"int"``, ``2``, ``signal.SIGINT``) as its name, checked as the
    engine will check it; one it can't send is refused up front, naming ``what``."""
    if isinstance(sig, int) and not isinstance(sig, bool):
        text = str(int(sig))
    elif isinstance(sig, str):
        text = sig
    else:
        raise TypeError(f"{what} must be a signal's name or number, not {sig!r}")
    try:
        return _native.signal_name(text)
    except ValueError:
        raise ValueError(
            f"{what}={sig!r} is not a signal hitchserve can send: give its name (e.g. 'SIGINT') "
            "or its number (e.g. signal.SIGINT)"
        ) from None


def _words(command: Union[str, bytes]) -> List[str]:
    """A command line given as one string, as the list it was probably meant to be (for an
    error's advice: split as a shell would, or at spaces if it can't be)."""
    text = os.fsdecode(command)
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _checked_command(command: Sequence[Any]) -> List[str]:
    """``command`` as strings: each argument a string, a path or a number."""
    try:
        args = list(command)
    except TypeError:
        raise TypeError(
            f"command must be a list of arguments, not a {type(command).__name__}: {command!r}"
        ) from None
    out = []
    for i, arg in enumerate(args):
        if isinstance(arg, (bytes, os.PathLike)):
            out.append(os.fsdecode(arg))
        elif arg is None or isinstance(arg, (bool, list, tuple, dict, set)):
            # None (a setting that was never set) and containers are mistakes, not arguments.
            raise TypeError(
                f"command[{i}] is {arg!r}: every argument must be a string (or a number, or a "
                "path)"
            )
        else:
            out.append(str(arg))
    return out


def _checked_needs(what: str, needs: Any) -> List[Union["Service", str]]:
    """``needs`` (or ``needs_started``, ``needs_completed``) as a list; one service or name
    alone counts as one."""
    if needs is None:
        return []
    if isinstance(needs, (str, Service)):
        return [needs]
    try:
        items = list(needs)
    except TypeError:
        raise TypeError(
            f"{what} must be a list of services or their names, not a {type(needs).__name__}: "
            f"{needs!r}"
        ) from None
    for item in items:
        if not isinstance(item, (str, Service)):
            raise TypeError(
                f"{what}: {item!r} is neither a service nor a service's name"
            )
    return items


def _seconds(value: Union[float, _dt.timedelta]) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)
