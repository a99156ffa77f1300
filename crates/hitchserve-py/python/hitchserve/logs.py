"""Log lines of a service (or of the whole bundle): printing, querying, waiting.

Everything here asks the engine (``hitchserve._native``): lines are stored, parsed as JSON and
waited for in Rust; these classes give them their Python shape.
"""

import contextlib
import datetime as _dt
import json
import sys
from typing import Any, Callable, Generator, Iterator, List, Optional, Tuple

from . import _native
from .errors import ServiceError

__all__ = ["Logs", "LogLine", "Tail", "Follow"]

#: How long ``tail.until`` / ``until_json`` wait when no ``timeout`` is given, in seconds.
DEFAULT_TIMEOUT = 60.0


class LogLine(str):
    """One log line: the text itself (a ``str``), with where and when it came from.

    ``service`` (``"Hitch"`` for the bundle's own lines), ``stream`` (``"stdout"`` or
    ``"stderr"``), ``part`` (``"main"``, ``"setup"`` or ``"poststart"``), ``incarnation``
    (which start of its service wrote it: 1 for the first, 2 after one restart...; 0 for the
    bundle's own lines), ``seq`` (its place among all lines of the bundle), ``time`` (a
    ``datetime``, real time) and ``console`` (the line as the console prints it, the label
    padded: ``[    Django] text``). From a tail, ``is_partial`` says it is the start of a
    line not ended yet (a ``Password: `` prompt), ``is_rest`` that it is what came after
    such a start (see :class:`Tail`).
    """

    service: str
    stream: str
    part: str
    incarnation: int
    seq: int
    console: str
    _time: float
    _shape: str

    def __new__(cls, entry: Tuple[Any, ...]) -> "LogLine":
        text, service, stream, part, seq, time, console, incarnation = entry[:8]
        self = super().__new__(cls, text)
        self.service = service
        self.stream = stream
        self.part = part
        self.incarnation = incarnation
        self.seq = seq
        self._time = time
        self.console = console
        # (A line pickled before lines said their shape is whole.)
        self._shape = entry[8] if len(entry) > 8 else "whole"
        return self

    def __getnewargs__(self) -> Tuple[Tuple[Any, ...]]:  # type: ignore[override]
        # What `copy`, `deepcopy` and `pickle` make it again from (str's own: the text alone).
        return (
            (
                str(self),
                self.service,
                self.stream,
                self.part,
                self.seq,
                self._time,
                self.console,
                self.incarnation,
                self._shape,
            ),
        )

    @property
    def time(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._time)

    @property
    def text(self) -> str:
        return str(self)

    @property
    def is_partial(self) -> bool:
        """The start of a line its service has not ended yet, handed out by a tail."""
        return self._shape == "partial"

    @property
    def is_rest(self) -> bool:
        """The rest of a line whose start a tail handed out as a partial line."""
        return self._shape == "rest"

    def __repr__(self) -> str:
        return f"LogLine({self.console!r})"


class Logs:
    """A view of stored log lines: ``.out`` and ``.err`` narrow it to one stream.

    Printed (or shown in IPython) in the console format. ``lines()`` gives the texts,
    ``json()`` every line that is JSON (parsed), ``len()`` how many there are, and ``tail``
    a cursor that waits for new lines.
    """

    def __init__(
        self, native: "_native.Logs", what: str = "logs", service: Optional[str] = None
    ) -> None:
        self._native = native
        self._what = what
        self._service = service  # None: the whole bundle's

    @property
    def out(self) -> "Logs":
        """Only standard output."""
        return Logs(self._native.out(), self._what + ".out", self._service)

    @property
    def err(self) -> "Logs":
        """Only standard error."""
        return Logs(self._native.err(), self._what + ".err", self._service)

    @property
    def setup(self) -> "Logs":
        """Only what the setup hook ran."""
        return Logs(self._native.setup(), self._what + ".setup", self._service)

    @property
    def poststart(self) -> "Logs":
        """Only what the poststart hook ran."""
        return Logs(self._native.poststart(), self._what + ".poststart", self._service)

    @property
    def main(self) -> "Logs":
        """Only the service's own process (no hook output)."""
        return Logs(self._native.main(), self._what + ".main", self._service)

    @property
    def tail(self) -> "Tail":
        """A cursor that starts now: ``tail.until(...)``, ``tail.until_json(...)``,
        ``tail.follow(lines_back=2)``."""
        return Tail(self._native.tail(0), self._service)

    def lines(self) -> List[str]:
        """The text of every line, oldest first."""
        return self._native.lines()

    def entries(self) -> List[LogLine]:
        """Every line with its service, stream and time, oldest first."""
        return [LogLine(e) for e in self._native.entries()]

    def last(self, n: int = 20) -> List[LogLine]:
        """The last ``n`` lines, oldest first."""
        return [LogLine(e) for e in self._native.last(_count(n, "n"))]

    def json(self) -> List[Any]:
        """Every line that parses as JSON, parsed (dicts, lists...), in order: as
        ``json.loads`` parses them (``NaN`` and ``Infinity`` included)."""
        parsed = (_parsed(line) for line in self._native.lines())
        return [value for ok, value in parsed if ok]

    def __len__(self) -> int:
        return len(self._native)

    def __iter__(self) -> Iterator[LogLine]:
        return iter(self.entries())

    def __str__(self) -> str:
        return self._native.console()

    def __repr__(self) -> str:
        text = self._native.console()
        return text.rstrip("\n") if text else f"<{self._what}: no lines yet>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class Tail:
    """A cursor over a log view. It starts where it was made (``logs.tail`` starts now) and
    moves past each line it returns, so successive waits see successive lines.

    A line a service has started but not ended (a prompt such as ``Password: ``, written
    without a newline) is seen as a partial line once the service has been quiet for a
    moment (about 50 ms). Once a tail returns such a partial line, it goes on with only the
    rest of that line (``"accepted"`` after ``"Password: "``); ``logs.lines()`` holds the
    whole line, once."""

    def __init__(self, native: "_native.Tail", service: Optional[str] = None) -> None:
        self._native = native
        self._service = service

    def until(
        self,
        condition: Callable[[str], Any],
        timeout: Optional[float] = None,
        lines_back: int = 0,
    ) -> LogLine:
        """Wait for the next line making ``condition(line)`` true, up to ``timeout`` seconds
        (default 60); start ``lines_back`` lines earlier. Raises :class:`LogTimeout` (with the
        last lines), :class:`LogEnded` if the service exits meanwhile, or whatever
        ``condition`` raised."""
        _check_condition("until", condition, "lambda line: {!r} in line")
        back = _count(lines_back, "lines_back")
        if back:
            self._native.back(back)
        with self._naming_the_service():
            return LogLine(self._native.until(condition, _timeout(timeout)))

    def until_json(
        self,
        condition: Callable[[Any], Any],
        timeout: Optional[float] = None,
        lines_back: int = 0,
    ) -> Any:
        """Wait for the next JSON line whose value makes ``condition(value)`` true, and
        return the value. Only objects and arrays are looked at: other lines are skipped,
        also those that are bare JSON values (``200``, ``true``, ``"text"``), which a
        condition such as ``lambda email: email["subject"] == ...`` can't look into."""
        _check_condition("until_json", condition, "lambda value: value.get('event') == {!r}")
        back = _count(lines_back, "lines_back")
        if back:
            self._native.back(back)
        # Parsed here, as ``json.loads`` parses (the engine's parser refuses ``NaN`` and
        # ``Infinity``, which Python's ``json.dumps`` writes).
        found: List[Any] = []

        def matches(line: str) -> bool:
            ok, value = _parsed(line)
            if ok and isinstance(value, (dict, list)) and condition(value):
                found.append(value)
                return True
            return False

        with self._naming_the_service():
            self._native.until(matches, _timeout(timeout))
        return found[-1]

    def follow(self, lines_back: int = 0) -> "Follow":
        """The lines as they arrive, starting ``lines_back`` lines earlier: iterate over it
        (it ends when the service's output ends; Ctrl-C raises ``KeyboardInterrupt``), or
        show it in IPython to print lines until Ctrl-C."""
        back = _count(lines_back, "lines_back")
        if back:
            self._native.back(back)
        return Follow(self._native)

    @contextlib.contextmanager
    def _naming_the_service(self) -> Iterator[None]:
        # The engine's wait errors name the service in their message only.
        try:
            yield
        except ServiceError as e:
            if e.service is None:
                e.service = self._service
            raise

    def __repr__(self) -> str:
        return "<Tail: until(condition), until_json(condition), follow(lines_back=0)>"


class Follow(Generator[LogLine, None, None]):
    """Lines as they arrive (a generator of :class:`LogLine`); ``close()`` ends it."""

    def __init__(self, native: "_native.Tail") -> None:
        self._native = native
        self._closed = False

    def send(self, value: None) -> LogLine:
        if self._closed:
            raise StopIteration
        entry = self._native.next_line()
        if entry is None:
            self._closed = True
            raise StopIteration
        return LogLine(entry)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> LogLine:
        # As a generator function's: what is thrown in ends it (close() throws GeneratorExit).
        self._closed = True
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        raise val.with_traceback(tb) if tb is not None else val

    def print(self) -> None:
        """Print each line in the console format until the output ends (or Ctrl-C)."""
        for line in self:
            print(line.console, flush=True)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # The seed's `In [4]: logs.tail.follow(lines_back=2)`: print until Ctrl-C.
        try:
            self.print()
        except KeyboardInterrupt:
            pass

    def __repr__(self) -> str:
        return "<Follow: iterate over it, or call print()>"


def _count(n: int, what: str) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"{what} is a number of lines, not {type(n).__name__}: {n!r}")
    if n < 0:
        raise ValueError(f"{what} is a number of lines, 0 or more, not {n}")
    # More lines than any log holds are all of them (the engine counts in 64 bits).
    return min(n, sys.maxsize)


def _checked_timeout(what: str, value: Any) -> float:
    """A timeout in seconds (anything ``float()`` takes, or a ``timedelta``): from 0 to a
    year."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    try:
        if value is None or isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of seconds, not {value!r}") from None
    if not 0 <= seconds <= 365 * 24 * 3600:
        raise ValueError(f"{what} must be from 0 to a year (in seconds), not {value!r}")
    return seconds


def _timeout(timeout: Any) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT
    return _checked_timeout("timeout", timeout)


def _check_condition(call: str, condition: Any, example: str) -> None:
    """A tail's condition is a function; anything else is refused before waiting (a string
    waited out its whole timeout when no line came)."""
    if not callable(condition):
        raise TypeError(
            f"{call}() takes a function that says whether a line is the one to wait for, not "
            f"a {type(condition).__name__}: e.g. {call}({example.format(condition)})"
        )


def _parsed(line: str) -> Tuple[bool, Any]:
    """Whether ``line`` is JSON (as ``json.loads`` reads it), and its value."""
    try:
        return True, json.loads(line)
    except (ValueError, RecursionError):  # (nested deeper than Python parses)
        return False, None

