"""ServiceBundle and Service as the seed defines them: definitions, startup, needs, console,
interactive mode, context manager, and the errors startup raises."""

import os
import re
import time

import pytest

import hitchserve
from conftest import PATIENCE, READY_THEN_WAIT, gone, py

# The seed's Django console session, printed by a stand-in server.
DJANGO = """
    import sys, time
    print("Performing system checks...")
    print("System check identified no issues (0 silenced).")
    print("July 11, 2015 - 10:36:58")
    print("Django version 1.8, using settings 'remindme.settings'")
    print("Starting development server at http://127.0.0.1:18080/")
    print("Quit the server with CONTROL-C.")
    print('[11/Jul/2015 10:36:59]"GET / HTTP/1.1" 500 99545', file=sys.stderr)
    print('[11/Jul/2015 10:36:59]"GET /favicon.ico HTTP/1.1" 404 2416', file=sys.stderr)
    print("DONE", file=sys.stderr)
    while True:
        time.sleep(3600)
"""


def django_bundle(project, **kwargs):
    bundle = hitchserve.ServiceBundle(
        project_directory=str(project),
        startup_timeout=PATIENCE,
        shutdown_timeout=5.0,
        **kwargs,
    )
    bundle["Django"] = hitchserve.Service(
        command=py(DJANGO),
        log_line_ready_checker=lambda line: "Quit the server with CONTROL-C." in line,
    )
    return bundle


def test_the_seeds_django_lines_are_printed_and_kept_per_stream(project, capfd):
    with django_bundle(project) as bundle:
        bundle.startup()
        django = bundle["Django"]
        django.logs.err.tail.until(lambda line: line == "DONE", timeout=PATIENCE, lines_back=10)
        # A line is stored (and seen by tails) just before its reader prints it: wait for
        # the print, looking again as the captured output grows.
        printed = ""
        deadline = time.monotonic() + PATIENCE
        while "[Err Django] DONE" not in printed and time.monotonic() < deadline:
            printed += capfd.readouterr().out
        assert "[    Django] Quit the server with CONTROL-C." in printed
        assert '[Err Django] [11/Jul/2015 10:36:59]"GET / HTTP/1.1" 500 99545' in printed

        assert django.logs.out.lines()[0] == "Performing system checks..."
        assert len(django.logs.out) == 6
        assert django.logs.err.lines()[-1] == "DONE"
        assert len(django.logs) == len(django.logs.out) + len(django.logs.err)
        shown = repr(django.logs)
        assert "[    Django] Performing system checks..." in shown
        assert "[Err Django] DONE" in shown
        assert str(django.logs.out).count("\n") == 6


def test_needs_take_service_objects_or_names_and_start_in_order(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Db"] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY")
    bundle["Cache"] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY")
    bundle["App"] = hitchserve.Service(
        command=py(READY_THEN_WAIT),
        log_line_ready_checker=lambda l: l == "READY",
        needs=[bundle["Db"], "Cache"],
    )
    with bundle:
        bundle.startup()
        hitch = bundle.logs.lines()
        started = [l for l in hitch if l.startswith("Starting ")]
        assert started.index("Starting App") > started.index("Starting Db")
        ready = [i for i, l in enumerate(hitch) if l.startswith("Db ready") or l.startswith("Cache ready")]
        assert all(i < hitch.index("Starting App") for i in ready)
        assert all(bundle[name].is_ready for name in bundle)


def test_env_vars_are_converted_with_str_and_directory_is_relative_to_the_project(project):
    (project / "sub").mkdir()
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Env"] = hitchserve.Service(
        command=py("""
            import os, time
            print("A=%s B=%s CWD=%s" % (os.environ["A"], os.environ["B"], os.getcwd()))
            print("READY")
            time.sleep(3600)
        """),
        log_line_ready_checker=lambda line: line == "READY",
        directory="sub",
        env_vars={"A": 1, "B": 2.5},
    )
    with bundle:
        bundle.startup()
        first = bundle["Env"].logs.out.lines()[0]
        assert first == f"A=1 B=2.5 CWD={os.path.realpath(project / 'sub')}"


def test_interactive_mode_still_says_a_crash_and_counts_only_the_service_lines_it_hid(project, capfd):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Brief"] = hitchserve.Service(
        command=py("import time; print('READY'); time.sleep(1000)"),
        log_line_ready_checker=lambda l: l == "READY",
    )
    bundle.startup(interactive=True)
    tail = bundle.logs.tail
    for i in range(3):
        bundle.log(f"note {i}")
    bundle["Brief"].kill()
    tail.until(lambda l: "exited unexpectedly" in l, timeout=PATIENCE)
    # A line is stored, then printed: a message of ours comes after what was printed so far.
    bundle.log("seen")
    out = capfd.readouterr().out
    # The crash is said at once, muted console or not.
    assert "WARNING: `Brief` exited unexpectedly" in out, out
    bundle.stop_interactive_mode()
    out = capfd.readouterr().out
    # The notes were printed (by log()); only the service's line was hidden.
    assert "1 service line was not printed during interactive mode" in out, out
    with pytest.raises(hitchserve.ServiceExited):
        bundle.shutdown()


def test_the_original_keywords_hitch_dir_and_quiet_are_accepted(project, capfd):
    with django_bundle(project, hitch_dir=str(project / ".hitch"), quiet=True) as bundle:
        bundle.startup()
        assert bundle.interactive
    assert "Quit the server" not in capfd.readouterr().out


def test_interactive_startup_leaves_the_console_alone_and_log_and_warn_print(project, capfd):
    bundle = django_bundle(project)
    with bundle:
        bundle.startup(interactive=True)
        bundle["Django"].logs.err.tail.until(lambda l: l == "DONE", timeout=PATIENCE, lines_back=10)
        assert "Django]" not in capfd.readouterr().out
        bundle.stop_interactive_mode()
        bundle.log("Your message here")
        bundle.warn("A bad thing just happened")
        out = capfd.readouterr().out
        assert "] Your message here" in out
        assert "WARNING: A bad thing just happened" in out
        assert "not printed during interactive mode" in out
        bundle.start_interactive_mode()
        assert bundle.interactive
        # Nothing is lost: the muted lines are stored.
        assert "Quit the server with CONTROL-C." in bundle.logs.lines()


def test_interactive_mode_shows_what_the_user_asked_for_and_mutes_only_service_lines(project, capfd):
    bundle = django_bundle(project)
    with bundle:
        bundle.startup(interactive=True)
        capfd.readouterr()
        bundle.time_travel(days=2)
        bundle.log("Your message here")
        bundle.warn("A bad thing just happened")
        out = capfd.readouterr().out.splitlines()
        # As the console prints them (the label padded to "Err Django").
        assert out[0].startswith("[     Hitch] Time traveling to 2 days from now (")
        assert out[1:] == [
            "[     Hitch] Your message here",
            "[     Hitch] WARNING: A bad thing just happened",
        ]


def test_ipython_completes_service_names(project):
    IPython = pytest.importorskip("IPython")
    from IPython.core.completer import provisionalcompleter

    bundle = django_bundle(project)
    bundle["HitchSMTP"] = hitchserve.Service(command=["true"])
    shell = IPython.InteractiveShell.instance()
    try:
        shell.user_ns["bundle"] = bundle
        with provisionalcompleter():
            found = {c.text for c in shell.Completer.completions('bundle["Hi', len('bundle["Hi'))}
    finally:
        IPython.InteractiveShell.clear_instance()
    assert "HitchSMTP" in found
    assert "Django" not in found


def test_the_context_manager_stops_every_service(project):
    with django_bundle(project) as bundle:
        bundle.startup()
        process = bundle["Django"].process
        assert process.is_running()
    assert process.wait(timeout=PATIENCE) is not None or not process.is_running()
    assert bundle["Django"].pid is None


def test_a_service_that_exits_before_it_is_ready_fails_startup_with_its_last_lines(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Broken"] = hitchserve.Service(
        command=py("""
            import sys
            print("loading settings")
            print("ImproperlyConfigured: SECRET_KEY", file=sys.stderr)
            sys.exit(3)
        """),
        log_line_ready_checker=lambda line: line == "READY",
    )
    with pytest.raises(hitchserve.StartupError) as raised:
        bundle.startup()
    err = raised.value
    assert isinstance(err, hitchserve.ServiceError)
    assert err.service == "Broken"
    assert err.kind == "ExitedBeforeReady"
    assert err.returncode == 3
    assert "service `Broken` exited before it was ready" in str(err)
    assert any("ImproperlyConfigured: SECRET_KEY" in l for l in err.last_lines)
    assert "ImproperlyConfigured: SECRET_KEY" in str(err)


def test_a_service_that_exits_0_before_it_is_ready_is_told_what_to_do_in_python_terms(project):
    # A server gone to the background, or a job that ends: the advice names this package's
    # API, not the engine's.
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Migrate"] = hitchserve.Service(
        command=["true"], log_line_ready_checker=lambda line: line == "READY"
    )
    with pytest.raises(hitchserve.StartupError) as raised:
        bundle.startup()
    said = str(raised.value)
    assert "daemonized" in said and "Service(one_shot=True)" in said, said
    assert "::" not in said, said


def test_a_ready_service_that_exits_while_others_start_is_a_startup_error(project):
    # `Early` is ready, then exits while `Late` still starts: `startup()` fails with an
    # ExitedDuringStartup, both a StartupError (as `startup()` promises) and a
    # ServiceExited. (Before, a plain ServiceExited, which `except StartupError` missed.)
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Early"] = hitchserve.Service(
        command=["sh", "-c", "echo READY; sleep 0.5; echo crashing >&2; exit 1"],
        log_line_ready_checker=lambda line: line == "READY",
    )
    bundle["Late"] = hitchserve.Service(
        command=["sh", "-c", "echo never ready; exec sleep 3600"],
        log_line_ready_checker=lambda line: line == "READY",
    )
    with pytest.raises(hitchserve.StartupError) as raised:
        bundle.startup()
    err = raised.value
    assert err.service == "Early"
    assert err.returncode == 1
    if err.kind == "ServiceExited":
        assert isinstance(err, hitchserve.ExitedDuringStartup)
        assert isinstance(err, hitchserve.ServiceExited)
    else:
        # A machine too loaded to see READY within half a second: exited before ready.
        assert err.kind == "ExitedBeforeReady"
    assert not bundle["Late"].is_running


def test_a_startup_timeout_is_a_startup_error_and_a_timeout_error(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=0.5)
    bundle["Slow"] = hitchserve.Service(
        command=py("""
            import time
            print("still loading")
            time.sleep(3600)
        """),
        log_line_ready_checker=lambda line: line == "READY",
    )
    with pytest.raises(hitchserve.StartupTimeout) as raised:
        bundle.startup()
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, hitchserve.StartupError)
    assert raised.value.service == "Slow"
    assert "`Slow` was waiting for" in str(raised.value)
    assert "increase ServiceBundle(startup_timeout=...) if the services are just slow" in str(raised.value)


@pytest.mark.parametrize(
    "define, words",
    [
        (lambda b: b.__setitem__("A", hitchserve.Service(command=["no-such-program-hs"])), "was not found"),
        (lambda b: b.__setitem__("A", hitchserve.Service(command=["true"], directory="missing")), "does not exist"),
        (lambda b: b.__setitem__("A", hitchserve.Service(command=["true"], needs=["Nope"])), "needs `Nope`"),
        (lambda b: b.__setitem__("bad name", hitchserve.Service(command=["true"])), "invalid service name"),
    ],
)
def test_bad_definitions_are_definition_errors_before_anything_starts(project, define, words):
    bundle = hitchserve.ServiceBundle(str(project))
    define(bundle)
    with pytest.raises(hitchserve.DefinitionError, match=words):
        bundle.startup()


@pytest.mark.parametrize(
    "service, advice",
    [
        (hitchserve.Service(command=["true"], directory="missing"), "or fix Service(directory=...)"),
        (hitchserve.Service(command=["true", "{port.web}"]), 'add Service(ports=["NAME"]) to the service'),
        (hitchserve.Service(command=["true"]), "give `ServiceBundle(project_directory=...)` the directory"),
    ],
)
def test_error_advice_names_the_python_arguments_not_the_rust_api(project, service, advice):
    if "project_directory" in advice:
        # A file where the project's directory should be.
        project = project / "a-file"
        project.write_text("")
    bundle = hitchserve.ServiceBundle(str(project))
    bundle["A"] = service
    with pytest.raises(hitchserve.DefinitionError) as raised:
        bundle.startup()
    assert advice in str(raised.value)
    assert "::" not in str(raised.value)


@pytest.mark.parametrize(
    "env_vars, error, words",
    [
        ({"A=B": 1}, hitchserve.DefinitionError, "env_vars: 'A=B' is not an environment variable name"),
        ({"": 2}, hitchserve.DefinitionError, "env_vars: '' is not an environment variable name"),
        ({3: "x"}, TypeError, "env_vars: variable names are strings, not int: 3"),
        ({"A": "x\0y"}, hitchserve.DefinitionError, "the value of 'A' contains a NUL"),
    ],
)
def test_bad_env_vars_are_refused_when_the_service_is_defined(env_vars, error, words):
    with pytest.raises(error, match=words):
        hitchserve.Service(command=["true"], env_vars=env_vars)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(needs=5), TypeError, "needs must be a list of services or their names, not a int"),
        (dict(needs=[None]), TypeError, "needs: None is neither a service nor a service's name"),
        (dict(env_vars="A=1"), TypeError, "env_vars must be a dict of names to values, not a str"),
        (dict(directory=5), TypeError, "directory must be a path"),
        (dict(stop_signal=999), ValueError, "stop_signal=999 is not a signal"),
        (dict(stop_signal="SIGNOPE"), ValueError, "stop_signal='SIGNOPE' is not a signal"),
        (dict(stop_signal="SIGIOT"), ValueError, "stop_signal='SIGIOT' is not a signal hitchserve can send"),
        (dict(command=["echo", None]), TypeError, r"command\[1\] is None"),
        (dict(user=1000), TypeError, "user must be a user's name"),
    ],
)
def test_arguments_of_the_wrong_kind_are_refused_naming_the_argument(kwargs, error, words):
    kwargs.setdefault("command", ["true"])
    with pytest.raises(error, match=words):
        hitchserve.Service(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(startup_timeout=None), TypeError, "startup_timeout must be a number of seconds, not None"),
        (dict(startup_timeout=-1), ValueError, "startup_timeout must be from 0 to a year"),
        (dict(shutdown_timeout=1e300), ValueError, "shutdown_timeout must be from 0 to a year"),
        (dict(log_memory_limit=-1), ValueError, "log_memory_limit must be a number of bytes"),
    ],
)
def test_bad_bundle_timeouts_are_refused_naming_the_argument(project, kwargs, error, words):
    with pytest.raises(error, match=words):
        hitchserve.ServiceBundle(str(project), **kwargs)


def test_a_wait_given_a_bad_timeout_names_it(project):
    bundle = hitchserve.ServiceBundle(str(project))
    bundle["A"] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY")
    with bundle:
        bundle.startup()
        for bad, error in (("abc", TypeError), (-1, ValueError)):
            with pytest.raises(error, match="timeout must be"):
                bundle["A"].logs.tail.until(lambda l: False, timeout=bad)
            with pytest.raises(error, match="timeout must be"):
                bundle["A"].wait_exit(bad)


def test_after_startup_refused_for_its_definitions_what_was_missing_can_be_added(project):
    # As in IPython: a need forgotten, said by startup(), added, and startup() again.
    bundle = hitchserve.ServiceBundle(str(project))
    bundle["App"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY", needs=["Db"]
    )
    with pytest.raises(hitchserve.DefinitionError, match="needs `Db`"):
        bundle.startup()
    with pytest.raises(hitchserve.DefinitionError, match="make a new ServiceBundle"):
        bundle["App"] = hitchserve.Service(command=["true"])
    bundle["Db"] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY")
    with bundle:
        bundle.startup()
        assert bundle["App"].is_ready and bundle["Db"].is_ready
        # A second startup() of the running bundle is refused, and adding stays refused
        # as for any started bundle (not "add what was missing").
        with pytest.raises(hitchserve.DefinitionError):
            bundle.startup()
        with pytest.raises(hitchserve.DefinitionError, match="already started"):
            bundle["Late"] = hitchserve.Service(command=["true"])


def test_an_empty_command_is_a_definition_error(project):
    bundle = hitchserve.ServiceBundle(str(project))
    bundle["A"] = hitchserve.Service(command=[])
    with pytest.raises(hitchserve.DefinitionError, match="needs a command"):
        bundle.startup()


def test_a_cron_command_given_as_one_string_or_empty_is_refused():
    from hitchserve.services import Cron

    with pytest.raises(TypeError, match=r"write command=\['echo', 'hello'\]"):
        Cron(every=60, command="echo hello")
    with pytest.raises(ValueError, match="runs nothing"):
        Cron(every=60, command=[])
    # A quote left open is still the advice, not shlex's own error.
    with pytest.raises(TypeError, match="command must be a list of arguments"):
        Cron(every=60, command="echo 'hi")
    with pytest.raises(TypeError, match="command must be a list of arguments"):
        hitchserve.Service(command="echo 'hi")


def test_numbers_of_any_kind_are_taken_where_numbers_are_asked_for(project):
    from decimal import Decimal
    from fractions import Fraction

    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=Decimal("15"), shutdown_timeout=Fraction(5))
    assert (bundle.startup_timeout, bundle.shutdown_timeout) == (15.0, 5.0)
    assert hitchserve.Service(command=["sleep", Decimal("0.5")]).command == ["sleep", "0.5"]


def test_one_need_given_alone_and_signal_names_are_understood(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Db"] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=lambda l: l == "READY")
    bundle["App"] = hitchserve.Service(command=py(READY_THEN_WAIT), needs="Db", stop_signal="int")
    assert bundle["App"].needs == ["Db"]
    with bundle:
        bundle.startup()


def test_one_service_object_under_two_names_is_refused(project):
    bundle = hitchserve.ServiceBundle(str(project))
    service = hitchserve.Service(command=["true"])
    bundle["A"] = service
    with pytest.raises(hitchserve.DefinitionError, match="already in the bundle as 'A'"):
        bundle["B"] = service
    # A name given again is replaced, as in a dict; the old Service is free for another.
    other = hitchserve.Service(command=["true"])
    bundle["A"] = other
    assert bundle["A"] is other
    bundle["B"] = service
    assert service.name == "B"


def test_a_service_name_that_is_not_a_string_is_refused_when_added(project):
    bundle = hitchserve.ServiceBundle(str(project))
    with pytest.raises(TypeError, match="service names are strings, not int: 1"):
        bundle[1] = hitchserve.Service(command=["true"])
    assert len(bundle) == 0


def test_a_command_given_as_one_string_is_a_type_error_suggesting_the_list():
    with pytest.raises(TypeError, match=r"command must be a list of arguments, not a str: "
                       r"write command=\['python3', '-c', 'print\(1\)'\]"):
        hitchserve.Service(command="python3 -c 'print(1)'")


def test_a_ready_checker_that_is_not_a_function_is_a_type_error_at_once():
    with pytest.raises(TypeError, match=r"log_line_ready_checker must be a function of a line .* "
                       r"not a str: e.g. log_line_ready_checker=lambda line: 'READY' in line"):
        hitchserve.Service(command=["true"], log_line_ready_checker="READY")


def test_an_unknown_service_is_a_key_error_naming_the_known_ones(project):
    bundle = django_bundle(project)
    with pytest.raises(KeyError) as raised:
        bundle["Celery"]
    assert isinstance(raised.value, hitchserve.NoSuchService)
    assert "it has: `Django`" in str(raised.value)
    # hitchserve 0.5.x raised IndexError there: code that catches it still does.
    with pytest.raises(IndexError):
        bundle["Celery"]


def test_a_relative_project_directory_is_where_it_was_when_the_bundle_was_made(project, monkeypatch):
    # As hitchserve 0.5.x: made absolute at once, so a later chdir doesn't move the services.
    monkeypatch.chdir(project)
    (project / "here").mkdir()
    bundle = hitchserve.ServiceBundle(".", startup_timeout=PATIENCE)
    assert bundle.project_directory == os.path.abspath(project)
    bundle["Where"] = hitchserve.Service(command=["sh", "-c", "pwd; echo READY; exec sleep 100"],
                                         log_line_ready_checker=lambda line: line == "READY")
    monkeypatch.chdir(project / "here")
    with bundle:
        bundle.startup()
        assert bundle["Where"].logs.out.lines()[0] == os.path.realpath(project)


def test_a_ready_checker_that_raises_fails_startup_with_that_exception(project):
    class Boom(Exception):
        pass

    def checker(line):
        if line == "READY":
            raise Boom("the checker broke on " + line)
        return False

    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["App"] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=checker)
    with pytest.raises(Boom, match="the checker broke on READY") as raised:
        bundle.startup()
    assert any("`App`" in note for note in raised.value.__notes__)
    # With the lines it was shown.
    assert any(re.search(r"\[ *App\] READY", note) for note in raised.value.__notes__), raised.value.__notes__


def test_a_crash_after_startup_is_reported_by_check_every_time_and_shutdown_after_none(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    bundle["Flaky"] = hitchserve.Service(
        command=py("""
            import os, sys, time
            print("READY", flush=True)
            while not os.path.exists("die"):
                time.sleep(0.01)
            print("lost the database", file=sys.stderr)
            sys.exit(7)
        """),
        log_line_ready_checker=lambda line: line == "READY",
    )
    bundle.startup()
    flaky = bundle["Flaky"]
    # It crashes after startup, when told to (not during it: that would fail startup).
    (project / "die").write_text("")
    assert flaky.wait_exit(timeout=PATIENCE) is not None
    with pytest.raises(hitchserve.ServiceExited) as raised:
        bundle.check()
    assert raised.value.service == "Flaky"
    assert raised.value.returncode == 7
    assert "lost the database" in str(raised.value)
    assert flaky.returncode == 7
    # check() told it: shutdown() doesn't raise it again (a test that handled the crash
    # failed its teardown).
    bundle.shutdown()
    with pytest.raises(hitchserve.ServiceExited):
        bundle.check()


def test_bundles_services_and_logs_have_useful_reprs(project):
    bundle = django_bundle(project)
    assert "not started" in repr(bundle)
    assert "'Django'" in repr(bundle["Django"])
    with bundle:
        bundle.startup()
        assert "started" in repr(bundle)
        assert "ready, pid" in repr(bundle["Django"])
        line = bundle["Django"].logs.last(1)[0]
        assert repr(line).startswith("LogLine(")
        assert line.service in ("Django",)
        assert "tail" in dir(bundle["Django"].logs)


def test_services_of_a_bundle_never_shut_down_die_with_the_python_process(tmp_path):
    import subprocess
    import sys
    import textwrap

    import psutil

    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, hitchserve
            bundle = hitchserve.ServiceBundle({str(tmp_path)!r}, quiet=True)
            bundle["Orphan"] = hitchserve.Service(
                command=[sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(3600)"],
                log_line_ready_checker=lambda line: line == "READY")
            bundle.startup()
            print(bundle["Orphan"].pid, flush=True)
        """)],
        capture_output=True, text=True, timeout=PATIENCE,
    )
    assert child.returncode == 0, child.stderr
    pid = int(child.stdout.split()[-1])
    try:
        orphan = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    gone, alive = psutil.wait_procs([orphan], timeout=PATIENCE)
    assert not alive


def test_a_bundle_left_running_at_exit_is_stopped_the_usual_way(tmp_path):
    """A script (or IPython session) that ends without ``shutdown()``: its services get
    their stop signal and the time to act on it, not the guardian's SIGKILL."""
    import subprocess
    import sys
    import textwrap

    flag = tmp_path / "got-term"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import hitchserve
            bundle = hitchserve.ServiceBundle({str(tmp_path)!r}, quiet=True)
            bundle["Trap"] = hitchserve.Service(
                command=["sh", "-c", "trap 'touch {flag}; exit 0' TERM; echo READY; while true; do sleep 0.1; done"],
                log_line_ready_checker=lambda line: line == "READY")
            bundle.startup()
        """)],
        capture_output=True, text=True, timeout=PATIENCE,
    )
    assert child.returncode == 0, child.stderr
    assert flag.exists(), child.stderr


def test_bundles_started_one_after_another_reuse_the_engines_threads(project):
    """A test session starts a bundle per test: the threads that watched one bundle's services
    watch the next one's (the engine keeps them a while), instead of new ones each time."""
    import threading

    def checker_thread(name: str) -> int:
        seen = []

        def ready(line: str) -> bool:
            seen.append(threading.get_native_id())
            return line == "READY"

        bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
        bundle[name] = hitchserve.Service(command=py(READY_THEN_WAIT), log_line_ready_checker=ready)
        bundle.startup()
        bundle.shutdown()
        return seen[0]

    first = checker_thread("First")
    assert checker_thread("Second") == first


def test_a_service_definition_serves_bundle_after_bundle_once_each_is_shut_down(tmp_path):
    # A module-level Service reused by every test: each bundle in turn, once the one
    # before has been shut down. (Before, the second bundle refused it for good.)
    web = hitchserve.Service(
        command=["sh", "-c", "echo READY; exec sleep 3600"],
        log_line_ready_checker=lambda line: line == "READY",
    )
    pids = []
    for i in range(2):
        bundle = hitchserve.ServiceBundle(str(tmp_path), startup_timeout=PATIENCE)
        bundle["Web"] = web
        with bundle:
            bundle.startup()
            assert web.pid is not None and web.pid not in pids
            pids.append(web.pid)
            assert "READY" in web.logs.out.lines()
    assert gone(pids)


def test_a_service_in_a_bundle_still_running_is_refused_by_another(tmp_path):
    web = hitchserve.Service(
        command=["sh", "-c", "echo READY; exec sleep 3600"],
        log_line_ready_checker=lambda line: line == "READY",
    )
    first = hitchserve.ServiceBundle(str(tmp_path), startup_timeout=PATIENCE)
    first["Web"] = web
    second = hitchserve.ServiceBundle(str(tmp_path), startup_timeout=PATIENCE)
    with pytest.raises(hitchserve.DefinitionError, match="shut that one down first"):
        second["Web"] = web


# A server that says nothing, and listens only a moment after it starts.
SILENT_SERVER = """
    import http.server, sys, time
    time.sleep(0.3)
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Quiet).serve_forever()
"""


@pytest.mark.parametrize("probe", ["tcp", "http"])
def test_a_silent_server_is_waited_for_with_a_probe(project, probe):
    """memcached or nginx say nothing when ready: ``ready_tcp`` / ``ready_http`` wait for
    the port (without one, ``startup()`` returned before it listened)."""
    import urllib.request

    kwargs = (
        {"ready_tcp": "127.0.0.1:{port.http}"}
        if probe == "tcp"
        else {"ready_http": "http://127.0.0.1:{port.http}/"}
    )
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE, quiet=True)
    bundle["Web"] = hitchserve.Service(
        command=py(SILENT_SERVER) + ["{port.http}"], ports=["http"], **kwargs
    )
    with bundle:
        bundle.startup()
        port = bundle["Web"].port("http")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=PATIENCE) as r:
            assert r.read() == b"ok"


def test_a_ready_file_and_a_line_check_must_both_pass(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE, quiet=True)
    bundle["Flag"] = hitchserve.Service(
        command=["sh", "-c", "echo STARTING; echo READY; touch flag; exec sleep 1000"],
        log_line_ready_checker=lambda line: line == "READY",
        ready_file="flag",
    )
    with bundle:
        bundle.startup()
        assert (project / "flag").exists()
        assert bundle["Flag"].logs.out.lines() == ["STARTING", "READY"]


def test_probes_that_are_no_address_are_refused_where_given():
    with pytest.raises(ValueError, match="host:port"):
        hitchserve.Service(command=["true"], ready_tcp="8080x")
    with pytest.raises(ValueError, match="1 to 65535"):
        hitchserve.Service(command=["true"], ready_tcp=0)
    with pytest.raises(TypeError, match="http://"):
        hitchserve.Service(command=["true"], ready_http="localhost:8080")
    assert hitchserve.Service(command=["true"], ready_tcp=8080).ready_tcp == "127.0.0.1:8080"


def test_a_service_in_a_bundle_copies_as_a_definition_of_its_own(project):
    import copy

    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE)
    first = hitchserve.Service(command=["sh", "-c", "echo READY $NAME; exec sleep 100"],
                               log_line_ready_checker=lambda line: line.startswith("READY"),
                               env_vars={"NAME": "first"})
    bundle["First"] = first
    # A copy (shallow or deep) is a definition, not the service `First`: it can be added
    # under another name (it claimed to be `First`, or could not be made).
    second, third = copy.copy(first), copy.deepcopy(first)
    second.env_vars["EXTRA"] = "only the copy's"
    assert "EXTRA" not in first.env_vars
    third.env_vars["NAME"] = "third"
    bundle["Second"] = second
    bundle["Third"] = third
    assert first.env_vars["NAME"] == "first"
    with bundle:
        bundle.startup()
        assert bundle["Second"].logs.out.lines() == ["READY first"]
        assert bundle["Third"].logs.out.lines() == ["READY third"]
        # Copied once started too: still a definition of its own.
        fourth = copy.deepcopy(bundle["First"])
        assert fourth.name is None
