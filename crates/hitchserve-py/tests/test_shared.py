"""A bundle shared by many processes (``hitchserve.SharedBundle``, the pytest fixtures
``hitchserve_shared_bundle`` / ``shared_bundle``, the ``hitchserve`` command of the wheel), run
for real: pytest-xdist workers starting one bundle, a changed definition, time travel refused
while another process holds the bundle, a failing test's own lines in its report."""

import datetime
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

import hitchserve
from conftest import PATIENCE

CLI = [sys.executable, "-m", "hitchserve.cli"]

#: `App` appends a line to starts.txt each time it starts, says `{ready}`, then prints each
#: line appended to said.txt, from its first (a test's way to make it write a line).
DEFINITION = """
[services.App]
command = ["sh", "-c", "echo start >> starts.txt; : >> said.txt; echo {ready}; exec tail -n +1 -f said.txt"]
ready = {{ line_contains = "{ready}" }}
ports = ["http"]
env = {{ APP_PORT = "{{port.http}}" }}
"""


def define(directory: pathlib.Path, ready: str = "READY") -> pathlib.Path:
    file = directory / "hitchserve.toml"
    file.write_text(DEFINITION.format(ready=ready))
    return file


def cli(file: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + ["-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=check,
    )


def starts(directory: pathlib.Path) -> int:
    path = directory / "starts.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def file(project):
    """The project's definition; its bundle is brought down after the test (`down`
    returns once every process has stopped)."""
    file = define(project)
    yield file
    cli(file, "down")


def test_attach_starts_the_bundle_and_says_its_services(file, project):
    with hitchserve.SharedBundle(file, idle=0) as shared:
        assert shared.started_it
        assert shared.holders == [os.getpid()]
        app = shared.service("App")
        assert app.state == "ready"
        assert app.environment["APP_PORT"] == str(app.port("http"))
        assert app.pid is not None and psutil.pid_exists(app.pid)
        ran = app.run("sh", "-c", "pwd; echo to-err >&2")
        assert ran.stdout.decode().strip() == str(project)
        assert ran.stderr.decode().strip() == "to-err"
        with pytest.raises(hitchserve.SubcommandFailed) as failed:
            app.run("sh", "-c", "echo nope >&2; exit 3")
        assert failed.value.returncode == 3 and failed.value.service == "App"
        # A signal's end as `subprocess` says it: minus its number.
        killed = app.run("sh", "-c", "kill -TERM $$", check=False)
        assert killed.returncode == -15
        with pytest.raises(hitchserve.NoSuchService):
            shared.service("Nope")
        # A second attach from this process finds it running.
        with hitchserve.SharedBundle(file) as again:
            assert not again.started_it
            assert again.holders == [os.getpid(), os.getpid()]
    assert starts(project) == 1


def test_a_tail_sees_the_lines_from_its_own_attach(file, project):
    with hitchserve.SharedBundle(file, idle=0) as first:
        said = project / "said.txt"
        with said.open("a") as f:
            f.write("before-the-second\n")
        first.service("App").tail().until("before-the-second", timeout=PATIENCE)
        with hitchserve.SharedBundle(file) as second:
            with said.open("a") as f:
                f.write('{"after": "the-second"}\n')
            tail = second.service("App").tail()
            assert tail.until_json("after", timeout=PATIENCE) == {"after": "the-second"}
            texts = [line.text for line in second.logs()]
            assert "before-the-second" not in texts
            assert '{"after": "the-second"}' in texts
            # As `json.loads` reads the line: its keys in their order, a big integer whole
            # (they came sorted, the integer a float).
            with said.open("a") as f:
                f.write('{"z": 1, "big": 123456789012345678901234567890, "a": 2}\n')
            value = tail.until_json("big", timeout=PATIENCE)
            assert list(value) == ["z", "big", "a"]
            assert value["big"] == 123456789012345678901234567890
            with pytest.raises(hitchserve.LogTimeout):
                second.service("App").tail().until("before-the-second", timeout=0.2)
            assert "before-the-second" in [line.text for line in first.logs()]
            # A pattern that doesn't parse is a bad definition of the wait, said at once.
            with pytest.raises(hitchserve.DefinitionError, match="invalid regular expression"):
                second.service("App").tail().until("(unclosed", timeout=PATIENCE)


def test_a_changed_definition_is_an_error_naming_the_service(file, project):
    with hitchserve.SharedBundle(file, idle=0):
        define(project, ready="SET")
        with pytest.raises(hitchserve.SharedBundleError) as changed:
            hitchserve.SharedBundle(file)
        assert "App" in str(changed.value)
    # Nobody holds the old one now: the new definition replaces it.
    with hitchserve.SharedBundle(file, idle=0) as replaced:
        assert replaced.started_it
        assert starts(project) == 2


def test_time_travel_is_refused_while_another_process_holds_the_bundle(file, project):
    other = subprocess.Popen(["sleep", "1000"])
    try:
        cli(file, "up", "--shared", "--idle", "0", "--pid", str(other.pid))
        with hitchserve.SharedBundle(file) as shared:
            before = shared.now()
            with pytest.raises(hitchserve.SharedBundleError) as refused:
                shared.time_travel(days=2)
            assert f"pids {other.pid}" in str(refused.value)
            cli(file, "release", "--pid", str(other.pid))
            shared.time_travel(days=2)
            assert shared.now() - before > datetime.timedelta(days=1)
    finally:
        other.kill()
        other.wait()


INNER_WORKERS = """
import os

def _check(shared_bundle, n):
    assert shared_bundle.service("App").state == "ready"
    assert os.getpid() in shared_bundle.holders

def test_1(shared_bundle): _check(shared_bundle, 1)
def test_2(shared_bundle): _check(shared_bundle, 2)
def test_3(shared_bundle): _check(shared_bundle, 3)
def test_4(shared_bundle): _check(shared_bundle, 4)
def test_5(shared_bundle): _check(shared_bundle, 5)
def test_6(shared_bundle): _check(shared_bundle, 6)
"""

#: A long idle time: a slow worker that attaches after the others have finished must still
#: find the bundle (the test brings it down itself).
INI = """
[pytest]
hitchserve_shared_file = hitchserve.toml
hitchserve_shared_idle = 600
"""


def test_xdist_workers_start_one_bundle(pytester):
    file = define(pytester.path)
    pytester.makeini(INI)
    pytester.makepyfile(test_inner=INNER_WORKERS)
    try:
        result = pytester.runpytest_subprocess("-n", "3", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=6)
        assert starts(pytester.path) == 1
    finally:
        cli(file, "down")


INNER_REPORT = """
import pathlib

def say(shared_bundle, text):
    with (pathlib.Path(shared_bundle.project_directory) / "said.txt").open("a") as f:
        f.write(text + "\\n")
    shared_bundle.service("App").tail().until(text, timeout=60)

def test_a_first(shared_bundle):
    say(shared_bundle, "line-of-the-first-test")

def test_b_second_fails(shared_bundle):
    say(shared_bundle, "line-of-the-second-test")
    assert False, "the second test fails"
"""


def test_a_failed_tests_report_shows_its_own_lines_and_the_all_log(pytester):
    file = define(pytester.path)
    pytester.makeini(INI)
    pytester.makepyfile(test_inner=INNER_REPORT)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
        result.assert_outcomes(passed=1, failed=1)
        out = result.stdout.str()
        section = out[out.index("hitchserve shared bundle") :]
        assert "line-of-the-second-test" in section
        assert "line-of-the-first-test" not in section
        match = re.search(r"all\.log: (\S+)", section)
        assert match, out
        log = pathlib.Path(match.group(1)).read_text()
        assert "line-of-the-first-test" in log and "line-of-the-second-test" in log
    finally:
        cli(file, "down")


def test_the_hitchserve_command_of_the_package(tmp_path):
    # Next to this Python (a venv's bin/), else on the PATH.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    script = shutil.which("hitchserve", path=path)
    assert script, "the package's `hitchserve` script is not installed"
    for command in ([script], CLI):
        helped = subprocess.run(
            command + ["--help"], capture_output=True, text=True, timeout=PATIENCE
        )
        assert helped.returncode == 0, helped.stderr
        assert "up" in helped.stdout and "time-travel" in helped.stdout
        assert helped.stderr == ""  # no warning from running the module
        wrong = subprocess.run(
            command + ["no-such-command"], capture_output=True, text=True, timeout=PATIENCE
        )
        assert wrong.returncode == 2 and "no-such-command" in wrong.stderr
    # `up --detach` runs the command again as the bundle's daemon: this Python's module.
    file = define(tmp_path)
    try:
        cli(file, "up", "--detach")
        status = cli(file, "status", "--json")
        assert '"App"' in status.stdout
    finally:
        cli(file, "down")
    assert starts(tmp_path) == 1


#: `Slow` counts its starts, tells the test its pid through a FIFO once it runs, and is never
#: ready.
SLOW = """
[services.Slow]
command = ["sh", "-c", "echo start >> starts.txt; echo $$ > running.fifo; exec sleep 1000"]
ready = { line_contains = "NEVER" }
"""

ATTACH_UNTIL_INTERRUPTED = """
import sys
import hitchserve
try:
    hitchserve.SharedBundle(sys.argv[1] + "/hitchserve.toml", idle=0)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
"""


def test_ctrl_c_while_attaching_stops_the_bundle_it_was_starting(project):
    file = project / "hitchserve.toml"
    file.write_text(SLOW)
    os.mkfifo(project / "running.fifo")
    # Its own session, as a terminal's foreground job: Ctrl-C reaches the command too.
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", ATTACH_UNTIL_INTERRUPTED, str(project)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        with (project / "running.fifo").open() as fifo:  # the service runs: startup is under way
            service = psutil.Process(int(fifo.read().strip()))
        # The `hitchserve up --shared` it runs, and the bundle's daemon that one started.
        commands = psutil.Process(child.pid).children(recursive=True)
        os.killpg(child.pid, signal.SIGINT)
        out, _ = child.communicate(timeout=PATIENCE)
        assert "INTERRUPTED" in out
        _, alive = psutil.wait_procs(commands + [service], timeout=PATIENCE)
        assert alive == []
        assert starts(project) == 1  # stopped, not started again
    finally:
        child.kill()
        child.wait()
        cli(file, "down")


def test_the_command_runs_the_mock_smtp_this_package_installed(project, tmp_path):
    # Nothing but the package, its venv not activated: no $HITCHSMTP, PATH without the
    # directory the package's scripts went to, no cargo-built hitchsmtp.
    file = project / "hitchserve.toml"
    file.write_text('[services.Mail]\nkind = "smtp"\n')
    env = {k: v for k, v in os.environ.items() if k != "HITCHSMTP"}
    env.update(PATH="/usr/bin:/bin", CARGO_HOME=str(tmp_path))
    try:
        up = subprocess.run(
            CLI + ["-f", str(file), "up", "--detach"],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            env=env,
        )
        assert up.returncode == 0, up.stderr
        port = int(cli(file, "port", "Mail", "smtp").stdout)
        assert port > 0
    finally:
        cli(file, "down", check=False)



def test_a_forked_child_leaving_the_with_block_leaves_the_parents_lease(file):
    # The child's release (its `with` exit) ended the parent's lease: the bundle stopped
    # under the parent, still inside its own `with` block.
    with hitchserve.SharedBundle(file, idle=0) as shared:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                shared.release()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert shared.holders == [os.getpid()]
        assert shared.service("App").state == "ready"


def test_a_shared_travel_too_far_and_a_report_of_no_lines_are_clear_errors(file):
    # Both came out of the package as OverflowError tracebacks.
    with hitchserve.SharedBundle(file, idle=0) as shared:
        with pytest.raises(hitchserve.TimeTravelError, match="too far from now"):
            shared.time_travel(days=1e12)
        with pytest.raises(ValueError, match="0 or more"):
            shared.report(-1)
        assert "all.log" in shared.report(0)


def test_the_ready_made_services_are_there_after_a_plain_import():
    code = "import hitchserve; print(hitchserve.services.Smtp.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE)
    assert out.stdout.strip() == "Smtp", out.stderr
