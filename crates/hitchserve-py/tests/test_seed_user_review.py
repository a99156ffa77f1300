"""A seed user's review (session 9): arguments of the wrong kind refused naming what to give,
errors of the right class, a tail's condition checked before the wait. Real processes."""

import datetime

import pytest

import hitchserve
from conftest import PATIENCE, READY_THEN_WAIT, py


def test_a_moment_beyond_any_clock_is_a_time_travel_error(project):
    """It was a ValueError with the date library's own words."""
    bundle = hitchserve.ServiceBundle(str(project))
    with pytest.raises(hitchserve.TimeTravelError):
        bundle.time_travel(datetime=datetime.datetime(9999, 12, 31))


def test_an_amount_of_time_of_the_wrong_kind_is_refused_naming_it(project):
    bundle = hitchserve.ServiceBundle(str(project))
    with pytest.raises(TypeError, match=r"time_travel\(days=...\) takes a number, not '2'"):
        bundle.time_travel(days="2")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"users": "app"}, "users= takes a list of entries"),
        ({"users": ("app", "pw")}, "users= takes a list of entries"),
        ({"users": ["app"]}, r"users: each entry is \(name, password\), not 'app'"),
        ({"databases": [("shop",)]}, r"databases: each entry is \(name, owner, dump\)"),
    ],
)
def test_postgres_users_and_databases_of_the_wrong_shape_are_refused_saying_the_shape(kwargs, words):
    from hitchserve.services import Postgres

    with pytest.raises(TypeError, match=words):
        Postgres(**kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"ports": "http"}, "ports=[ 'http' ]".replace(" ", "")),
        ({"ports": ["http", ""]}, "non-empty string"),
        ({"no_libfaketime": "no"}, "no_libfaketime= is True or False"),
        ({"one_shot": 1}, "one_shot= is True or False"),
        ({"env_vars": {"A": None}}, "the value of 'A' is None"),
    ],
)
def test_arguments_that_would_be_misread_are_refused_when_defined(kwargs, words):
    """`ports="http"` became four ports h, t, t, p; `no_libfaketime="no"` was true;
    `env_vars={"A": None}` set A to the string "None"."""
    with pytest.raises(TypeError) as raised:
        hitchserve.Service(command=py(READY_THEN_WAIT), **kwargs)
    assert words in str(raised.value)


def test_a_tails_condition_that_is_not_a_function_is_refused_before_waiting(project):
    """A string waited out the whole timeout when no line came."""
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Svc"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    with bundle:
        bundle.startup()
        tail = bundle["Svc"].logs.tail
        with pytest.raises(TypeError) as raised:
            tail.until("READY", timeout=PATIENCE)
        assert "until(lambda line: 'READY' in line)" in str(raised.value)
        with pytest.raises(TypeError):
            tail.until_json("event", timeout=PATIENCE)


def test_a_failed_start_by_hand_shows_only_its_own_lines(project):
    """The error of a start by hand showed the first start's READY among its last lines."""
    (project / "mode").write_text("ok")
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Svc"] = hitchserve.Service(
        command=["sh", "-c", 'if [ "$(cat mode)" = ok ]; then echo READY; exec sleep 60; fi; '
                 "echo broken >&2; exit 3"],
        log_line_ready_checker=lambda line: line == "READY",
    )
    with bundle:
        bundle.startup()
        bundle["Svc"].stop()
        (project / "mode").write_text("broken")
        with pytest.raises(hitchserve.StartupError) as raised:
            bundle["Svc"].start()
        assert "broken" in str(raised.value)
        assert "READY" not in str(raised.value)


def test_after_shutdown_time_travel_and_startup_say_the_bundle_has_stopped(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Svc"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    bundle.startup()
    bundle.shutdown()
    with pytest.raises(hitchserve.NotRunning) as raised:
        bundle.time_travel(days=1)
    assert "make a new one" in str(raised.value)
    with pytest.raises(hitchserve.NotRunning):
        bundle.startup()


class Web(hitchserve.Service):
    """A seed-style service whose poststart looks at itself: its port and pid."""

    seen: dict = {}

    def poststart(self) -> None:
        Web.seen["port"] = self.port("http")
        Web.seen["pid"] = self.pid
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{self.port('http')}/")


def test_a_poststart_hook_knows_its_services_port_and_pid(project):
    """`self.port(...)` and `self.pid` inside a hook raised "the bundle is starting up"."""
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Web"] = Web(
        command=["python3", "-u", "-m", "http.server", "{port.http}", "--bind", "127.0.0.1"],
        ports=["http"],
        log_line_ready_checker=lambda line: "Serving" in line,
    )
    with bundle:
        bundle.startup()
        assert Web.seen["port"] == bundle["Web"].port("http")
        assert Web.seen["pid"] == bundle["Web"].pid


@pytest.mark.parametrize(
    "text, seconds", [("0", 0.0), ("10", 10.0), ("1h30m", 5400.0), ("5 minutes", 300.0), ("2d", 172800.0)]
)
def test_the_plugins_idle_time_is_read_as_the_clis_idle_is(text, seconds):
    """`hitchserve_shared_idle = 1h30m` (or `2d`, `5 minutes`) was a usage error, though
    the CLI's `--idle` takes them."""
    from hitchserve import _native

    assert _native.idle_seconds(text) == seconds


def test_an_idle_time_that_is_none_is_a_value_error_saying_why():
    from hitchserve import _native

    with pytest.raises(ValueError) as raised:
        _native.idle_seconds("soon")
    assert "soon" in str(raised.value)


def test_a_bundle_check_tells_a_crash_once_for_shutdown(project):
    """After `check()` raised a crash, `shutdown()` (a pytest teardown) raised it again."""
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Sleeper"] = hitchserve.Service(command=["sleep", "1000"])
    bundle.startup()
    bundle["Sleeper"].kill()
    assert bundle["Sleeper"].wait_exit(timeout=PATIENCE) is not None
    with pytest.raises(hitchserve.ServiceExited):
        bundle.check()
    bundle.shutdown()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timedelta": datetime.timedelta.max},
        {"days": 999999999},
        {"seconds": 1e308},
        {"datetime": datetime.datetime.min},
    ],
)
def test_a_travel_beyond_any_clock_is_a_time_travel_error(project, kwargs):
    """They were OverflowError or ValueError from the conversions."""
    bundle = hitchserve.ServiceBundle(str(project))
    with pytest.raises(hitchserve.TimeTravelError):
        bundle.time_travel(**kwargs)
