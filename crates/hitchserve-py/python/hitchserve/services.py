"""Ready-made services over the engine's: PostgreSQL, Redis, a mock SMTP server and a cron
that runs on fake time. Each is a :class:`~hitchserve.Service` (so ``env_vars``,
``directory``, ``needs`` and the rest still apply) whose program, readiness and hooks are the
engine's; once started, each gives what a test uses (``psql``, ``cli``, ``messages``...).

Their hooks are the engine's: overriding ``setup``/``poststart`` on them is refused.
"""

import datetime as _dt
import functools
import importlib.metadata
import math
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Union

from . import _native
from .service import PathLike, Service, Subcommand, _checked_command, _seconds, _words

__all__ = ["Postgres", "PostgresUser", "PostgresDatabase", "Redis", "Smtp", "Cron"]


class _ReadyMade(Service):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def _definition(self) -> "_native.ServiceDef":
        for hook in ("setup", "poststart"):
            if self._overrides(hook):
                raise TypeError(
                    f"{type(self).__name__} has its own {hook} hook: wrap a plain Service instead of overriding it"
                )
        for check in ("log_line_ready_checker", "ready_tcp", "ready_http", "ready_file"):
            if getattr(self, check, None) is not None:
                raise TypeError(
                    f"{type(self).__name__} has its own readiness check: {check} would replace it "
                    f"(it is ready once it answers); wait for more in a test of your own"
                )
        return super()._definition()


class PostgresUser(NamedTuple):
    name: str
    password: str


class PostgresDatabase(NamedTuple):
    name: str
    owner: str
    dump: Optional[PathLike] = None


def _entries(what: str, given: Any) -> List[Any]:
    """``users=`` or ``databases=``: a list of entries (one entry alone, or a string, is a
    mistake said here rather than as a tuple's)."""
    if isinstance(given, (str, bytes)) or (
        isinstance(given, tuple) and given and not isinstance(given[0], (tuple, list))
    ):
        raise TypeError(
            f"{what}= takes a list of entries, e.g. [PostgresUser('app', 'secret')], not {given!r}"
        )
    return list(given)


def _entry(kind: Any, what: str, entry: Any) -> Any:
    """One entry of ``users=`` or ``databases=``, as ``kind`` (a named tuple)."""
    if isinstance(entry, kind):
        return entry
    fields = ", ".join(kind._fields)
    if isinstance(entry, (str, bytes)) or not isinstance(entry, (tuple, list)):
        raise TypeError(f"{what}: each entry is ({fields}), not {entry!r}")
    try:
        return kind(*entry)
    except TypeError:
        raise TypeError(f"{what}: each entry is ({fields}), not {entry!r}") from None


class Postgres(_ReadyMade):
    """PostgreSQL: a fresh cluster per run on a free port, with these users and databases
    (``PostgresUser(name, password)``, ``PostgresDatabase(name, owner, dump=None)``, or
    plain tuples) created once it is ready. Run as root, it runs as the ``postgres`` user."""

    def __init__(
        self,
        users: Iterable[Union[PostgresUser, Sequence[str]]] = (),
        databases: Iterable[Union[PostgresDatabase, Sequence[Any]]] = (),
        *,
        bin_dir: Optional[PathLike] = None,
        fresh_initdb: bool = False,
        os_user: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.users = [_entry(PostgresUser, "users", u) for u in _entries("users", users)]
        self.databases = [
            _entry(PostgresDatabase, "databases", d) for d in _entries("databases", databases)
        ]
        self.bin_dir = bin_dir
        self.fresh_initdb = fresh_initdb
        self.os_user = os_user

    def _base_definition(self) -> "_native.ServiceDef":
        return _native.ServiceDef.postgres(
            [(u.name, u.password) for u in self.users],
            [(d.name, d.owner, os.fspath(d.dump) if d.dump else None) for d in self.databases],
            os.fspath(self.bin_dir) if self.bin_dir else None,
            self.fresh_initdb,
            self.os_user,
        )

    def _pg(self) -> "_native.PostgresHandle":
        return self._engine().postgres(str(self.name))

    @property
    def postgres_port(self) -> int:
        return self._pg().port()

    def connection_url(self, database: str) -> str:
        """The superuser's URL through the server's private Unix socket
        (``postgresql://postgres@/DB?host=SOCKET_DIR&port=PORT``): for the test, run as root or
        the server's user. An application connects over TCP as a user made with ``users=``:
        ``postgresql://USER:PASSWORD@127.0.0.1:{postgres_port}/DB``."""
        return self._pg().connection_url(database)

    def psql(self, database: str, sql: str) -> Subcommand:
        """``psql`` on ``database`` running ``sql`` (sent on stdin): ``.run()`` or
        ``.checked_output()``."""
        return Subcommand(self._pg().psql(database, sql))

    def psql_file(self, database: str, file: PathLike) -> Subcommand:
        return Subcommand(self._pg().psql_file(database, os.fspath(file)))


class Redis(_ReadyMade):
    """Redis on a free port, in memory only; it follows time travel (a key's TTL runs out on a
    jump). ``config={"maxmemory": "10mb"}`` passes directives."""

    def __init__(self, config: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = dict(config or {})

    def _base_definition(self) -> "_native.ServiceDef":
        return _native.ServiceDef.redis([(str(k), str(v)) for k, v in self.config.items()])

    @property
    def redis_port(self) -> int:
        return self._engine().redis(str(self.name)).port()

    @property
    def url(self) -> str:
        return self._engine().redis(str(self.name)).url()

    def cli(self, *args: Any) -> Subcommand:
        """``redis-cli`` against it: ``redis.cli("SET", "k", "v").run()``."""
        return Subcommand(self._engine().redis(str(self.name)).cli([str(a) for a in args]))


class Smtp(_ReadyMade):
    """The mock SMTP server (``hitchsmtp``): every message is a JSON line in its logs
    (``sent_from``, ``sent_to``, ``subject``, ``payload``, ``links``...), for
    ``logs.json()`` and ``logs.out.tail.until_json(...)``. It is in this package (the
    ``hitchsmtp`` command it installs, ``python -m hitchserve.smtp``); ``program=`` or
    ``$HITCHSMTP`` runs another ``hitchsmtp`` instead (e.g. one built with cargo)."""

    def __init__(self, program: Optional[PathLike] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.program = program

    def _base_definition(self) -> "_native.ServiceDef":
        program = self.program
        if program is None and not os.environ.get("HITCHSMTP"):
            program = _packaged_hitchsmtp()
        return _native.ServiceDef.smtp(os.fspath(program) if program else None)

    @property
    def smtp_port(self) -> int:
        return self._engine().smtp(str(self.name)).port()

    def messages(self) -> List[Any]:
        """Every message received so far, as a dict."""
        return self.logs.out.json()


@functools.lru_cache(maxsize=None)
def _packaged_hitchsmtp() -> Optional[str]:
    """The ``hitchsmtp`` command installed with this package (wherever the installer put its
    scripts: a venv, ``--user``, ``/usr/local/bin``...), from the package's own record; without
    it (a broken install), the engine looks on ``PATH`` and says how to install one."""
    try:
        files = importlib.metadata.distribution("hitchserve").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "hitchsmtp" and file.parent.name == "bin":
            path = os.path.abspath(os.fspath(file.locate()))
            if os.access(path, os.X_OK):
                return path
    return None


class Cron(_ReadyMade):
    """Run ``command`` every ``every`` (seconds or a ``timedelta``) of the bundle's fake
    time, so a time jump runs it at once."""

    def __init__(
        self, every: Union[float, _dt.timedelta], command: Sequence[Any], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        try:
            if every is None or isinstance(every, (bool, str, bytes)):
                raise TypeError
            seconds = _seconds(every)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(
                f"Cron: `every` must be a number of seconds or a timedelta, not {every!r}: "
                f"e.g. every=300 or every=timedelta(minutes=5)"
            ) from None
        if not seconds > 0 or math.isinf(seconds):
            raise ValueError(
                f"Cron: `every` must be a time of more than 0 seconds, not {every!r}"
            )
        self.every = every
        if isinstance(command, (str, bytes)):
            raise TypeError(
                f"Cron: command must be a list of arguments, not a {type(command).__name__}: "
                f"write command={_words(command)!r} (no shell runs it)"
            )
        self.cron_command = _checked_command(command)
        if not self.cron_command:
            raise ValueError("Cron: command=[] runs nothing: give the program and its arguments")

    def _base_definition(self) -> "_native.ServiceDef":
        return _native.ServiceDef.cron(_seconds(self.every), self.cron_command)
