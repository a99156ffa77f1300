"""The rest of the seed, section by section, written as the seed writes it: time travel,
the process API through psutil, sub-commands, subclassed services with setup/poststart."""

import os
import signal
import stat
import sys
from datetime import datetime, timedelta

import psutil
import pytest

import hitchserve
from hitchserve import Service
from conftest import PATIENCE, READY_THEN_WAIT, py

CLOCK = "import time; print(int(time.time()))"


@pytest.fixture
def started(service_bundle):
    service_bundle["Django"] = Service(
        command=py(READY_THEN_WAIT),
        log_line_ready_checker=lambda line: line == "READY",
    )
    service_bundle["Plain"] = Service(
        command=py(READY_THEN_WAIT),
        log_line_ready_checker=lambda line: line == "READY",
        no_libfaketime=True,
    )
    service_bundle.startup()
    return service_bundle


def service_clock(bundle, name):
    out = bundle[name].subcommand(sys.executable, "-c", CLOCK).run(check_output=True)
    return datetime.fromtimestamp(int(out))


def test_the_seeds_time_travel_session(started):
    bundle = started
    real = datetime.now()
    bundle.time_travel(hours=23)
    assert bundle.now() - real >= timedelta(hours=23)
    bundle.time_travel(days=1)
    bundle.time_travel(timedelta=timedelta(days=1))
    now = bundle.now()
    assert isinstance(now, datetime)
    assert now - real >= timedelta(days=2, hours=23)
    # The service sees it; a service with no_libfaketime does not.
    assert service_clock(bundle, "Django") - real >= timedelta(days=2, hours=22, minutes=59)
    assert service_clock(bundle, "Plain") - real < timedelta(hours=1)

    bundle.time_travel(datetime=datetime(2030, 6, 1, 9, 0))
    assert bundle.now().replace(second=0, microsecond=0) >= datetime(2030, 6, 1, 9, 0)
    assert service_clock(bundle, "Django").date() == datetime(2030, 6, 1).date()

    before = bundle.now()
    bundle.time_travel(days=-1)
    assert bundle.now() < before - timedelta(hours=23)
    printed = [l for l in bundle.logs.lines() if l.startswith("Time traveling to")]
    assert len(printed) == 5

    # Back to the real time, as the seed does it: "Time traveling to now".
    bundle.time_travel(datetime=datetime.now())
    # (The bundle's last time-travel line: a service's line may come after it.)
    said = [l for l in bundle.logs.lines() if l.startswith("Time traveling to")][-1]
    assert said.startswith("Time traveling to now ("), said


def test_a_jump_is_said_as_where_the_clock_now_is(started):
    # As the seed's log says it: where the services' clock is, from real time (jumps add
    # up: "2 days from now" after two jumps of a day), to the second.
    bundle = started
    before = bundle.now()
    bundle.time_travel(days=-3)
    assert bundle.now() < before - timedelta(days=2, hours=23)
    bundle.time_travel(days=-1)
    bundle.time_travel(timedelta(hours=-2), minutes=-30)
    bundle.time_travel(days=6)
    said = [l.split(" (")[0] for l in bundle.logs.lines() if l.startswith("Time traveling")]
    assert said == [
        "Time traveling to 3 days ago",
        "Time traveling to 4 days ago",
        "Time traveling to 4 days 2 hours ago",
        "Time traveling to 1 day 21 hours from now",
    ]


def test_a_timedelta_given_first_is_a_delta(started):
    bundle = started
    real = datetime.now()
    before = len(bundle.logs)
    bundle.time_travel(timedelta(days=1))
    assert bundle.now() - real >= timedelta(days=1)
    # Service lines may come after it: look at everything logged since.
    said = bundle.logs.lines()[before:]
    assert any(l.startswith("Time traveling to 1 day from now") for l in said), said


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda b: b.time_travel("2015-01-01"), "takes a datetime.datetime"),
        (lambda b: b.time_travel(datetime="2015-01-01"), "not str: '2015-01-01'"),
        (lambda b: b.time_travel(timedelta=3), "takes a datetime.timedelta, not int"),
    ],
)
def test_time_travel_to_something_not_a_datetime_is_a_type_error(started, call, words):
    before = len(started.logs)
    with pytest.raises(TypeError, match=words):
        call(started)
    assert not [l for l in started.logs.lines()[before:] if l.startswith("Time traveling")]


def test_the_process_api_is_psutil(started):
    django = started["Django"]
    assert isinstance(django.pid, int)
    process = django.process
    assert isinstance(process, psutil.Process)
    assert process.pid == django.pid
    assert process.is_running()
    assert process.cmdline()[0] == sys.executable
    assert process.memory_info().rss > 0
    assert process.cwd() == os.path.realpath(started.project_directory)
    assert process.as_dict(attrs=["pid"])["pid"] == django.pid
    process.send_signal(signal.SIGKILL)
    assert django.wait_exit(timeout=PATIENCE) is not None
    with pytest.raises(hitchserve.ServiceExited, match="SIGKILL|signal 9"):
        started.check()
    with pytest.raises(hitchserve.NotRunning):
        django.process
    # Told by check(): shutdown has nothing to add.
    started.shutdown()


def test_subcommands_run_in_the_services_environment_and_directory(service_bundle, project):
    manage = project / "manage.py"
    manage.write_text(
        "#!/usr/bin/env python3\n"
        "import os, sys\n"
        "print('manage', ' '.join(sys.argv[1:]), os.environ['SETTINGS'], os.getcwd())\n"
        "sys.exit(2 if sys.argv[1:] == ['fail'] else 0)\n"
    )
    manage.chmod(manage.stat().st_mode | stat.S_IXUSR)
    service_bundle["Django"] = Service(
        command=py(READY_THEN_WAIT),
        log_line_ready_checker=lambda line: line == "READY",
        env_vars={"SETTINGS": "remindme.settings"},
    )
    service_bundle.startup()
    django = service_bundle["Django"]
    django.subcommand("./manage.py", "help").run()
    out = django.subcommand("./manage.py", "help").run(check_output=True)
    assert out.strip() == f"manage help remindme.settings {os.path.realpath(project)}"
    done = django.subcommand("./manage.py", "fail").output()
    assert done.returncode == 2
    # Ended by a signal: minus its number, as `subprocess.run` says it.
    assert django.subcommand("sh", "-c", "kill -TERM $$").output().returncode == -15
    with pytest.raises(hitchserve.SubcommandFailed) as raised:
        django.subcommand("./manage.py", "fail").run()
    assert raised.value.returncode == 2
    assert raised.value.service == "Django"
    django.subcommand("./manage.py", "fail").run(ignore_errors=True)
    assert django.subcommand("cat").output(stdin="to stdin").stdout == b"to stdin"


class MyService(Service):
    """The seed's last section: a service with setup and poststart."""

    def __init__(self, **kwargs):
        kwargs["log_line_ready_checker"] = lambda line: "line in logs that signals readiness" in line
        kwargs["command"] = py("""
            import sys, time
            print(open("prepared.txt").read().strip())
            print("line in logs that signals readiness")
            time.sleep(3600)
        """)
        super(MyService, self).__init__(**kwargs)

    def setup(self):
        """This is where you run all of the code you want run before starting the service."""
        self.log("preparing")
        self.run(sys.executable, "-c", "open('prepared.txt', 'w').write('prepared by setup')")

    def poststart(self):
        """This is where you put all of the code you want run after the service is ready."""
        self.subcommand(sys.executable, "-c", "print('created the users')").run()
        self.poststarted = True


def test_a_subclassed_service_runs_setup_before_and_poststart_after_it_is_ready(service_bundle):
    service_bundle["Mine"] = MyService()
    service_bundle["After"] = Service(
        command=py(READY_THEN_WAIT),
        log_line_ready_checker=lambda line: line == "READY",
        needs=[service_bundle["Mine"]],
    )
    service_bundle.startup()
    mine = service_bundle["Mine"]
    assert mine.poststarted
    assert mine.logs.main.out.lines()[0] == "prepared by setup"
    assert mine.logs.setup.lines() == ["preparing"]
    assert mine.logs.poststart.lines() == ["created the users"]
    hitch = service_bundle.logs.lines()
    assert hitch.index("Starting After") > max(
        i for i, l in enumerate(service_bundle.logs.entries()) if l == "created the users"
    )


class Reconfiguring(Service):
    """Changes what starts in setup(): fixed when startup() began, so refused (it was
    silently not used)."""

    def __init__(self, **kwargs):
        super().__init__(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY", **kwargs)

    def setup(self):
        self.env_vars["CONFIG"] = "/path/app.cfg"


def test_a_setup_that_changes_the_command_or_environment_is_refused_saying_where_to_set_them(service_bundle):
    service_bundle["App"] = Reconfiguring()
    with pytest.raises(hitchserve.DefinitionError) as raised:
        service_bundle.startup()
    assert "setup() changed its env_vars" in str(raised.value)
    assert "in __init__" in str(raised.value)


class Exploding(Service):
    def __init__(self, **kwargs):
        super().__init__(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY", **kwargs)

    def poststart(self):
        raise RuntimeError("CREATE USER failed")


def test_a_hook_that_raises_fails_startup_with_that_exception_and_stops_everything(service_bundle):
    service_bundle["Db"] = Exploding()
    with pytest.raises(RuntimeError, match="CREATE USER failed") as raised:
        service_bundle.startup()
    assert any("poststart hook of service `Db`" in n for n in raised.value.__notes__)
    assert service_bundle["Db"].pid is None


def test_a_hook_context_is_only_usable_during_the_hook(service_bundle):
    kept = []

    class Keeper(Service):
        def setup(self):
            kept.append(self._ctx)

    service_bundle["K"] = Keeper(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY")
    service_bundle.startup()
    with pytest.raises(RuntimeError, match="hook that has returned"):
        kept[0].log("too late")


class Migrating(Service):
    """Reads its own logs and the run's directory in its hooks (a poststart waiting for a
    second line after readiness; a setup writing where `{run}` points)."""

    def __init__(self, **kwargs):
        super().__init__(
            command=["sh", "-c", "echo READY; cat {run}/seed.txt; echo migrated; exec sleep 1000"],
            log_line_ready_checker=lambda l: l == "READY",
            **kwargs,
        )

    def setup(self):
        with open(os.path.join(self.run_directory, "seed.txt"), "w") as f:
            f.write("seeded from setup\n")

    def poststart(self):
        self.migrated = self.logs.out.tail.until(lambda l: l == "migrated", timeout=PATIENCE, lines_back=10)


def test_hooks_read_the_services_logs_and_the_run_directory(service_bundle):
    service_bundle["Db"] = Migrating()
    service_bundle.startup()
    db = service_bundle["Db"]
    assert db.migrated == "migrated"
    assert db.logs.out.lines()[:3] == ["READY", "seeded from setup", "migrated"]
    assert db.run_directory == service_bundle.run_directory
