"""Review of issue #16 (Python side): a bundle shared by many test processes.

Each test names the behaviour it expects and fails today; the failure seen is in the comment
above it. Real processes only; every bundle is brought down (`hitchserve down`) after.
"""

import os
import shutil
import subprocess
import sys
import venv

import psutil

import hitchserve
from conftest import PATIENCE
from test_shared import cli, define

INI = """
[pytest]
hitchserve_shared_file = hitchserve.toml
hitchserve_shared_idle = {idle}
"""


def run_inner(pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


# -- time travel leaks from one test into the next -------------------------------------------

INNER_TRAVEL = """
import datetime

def test_a_travels(shared_bundle):
    shared_bundle.time_travel(days=30)
    assert shared_bundle.now() - datetime.datetime.now() > datetime.timedelta(days=29)

def test_b_expects_real_time(shared_bundle):
    drift = abs(shared_bundle.now() - datetime.datetime.now())
    assert drift < datetime.timedelta(days=1), f"the clock is off by {drift}"
"""


# Fails today: the second test finds the first one's clock.
#   test_inner.py:9: AssertionError: the clock is off by 29 days, 23:59:59.999877
#   FAILED test_inner.py::test_b_expects_real_time
# A travel is undone when the *process's* leases end (control/leases.rs `travel`/`end`, by
# pid), and the session fixture `hitchserve_shared_bundle` holds one for the whole session
# (pytest_plugin.py:90), so the per-test view `shared_bundle` (pytest_plugin.py:95-103)
# never undoes it. README.md: "Its travel is undone ... once its leases end, so the next test
# doesn't inherit it."
def test_a_tests_time_travel_is_undone_before_the_next_test_of_the_same_process(pytester):
    file = define(pytester.path)
    pytester.makeini(INI.format(idle=600))
    pytester.makepyfile(test_inner=INNER_TRAVEL)
    try:
        result = run_inner(pytester)
        result.assert_outcomes(passed=2)
    finally:
        cli(file, "down")


# -- the ini option's idle time -------------------------------------------------------------


# Fails today: a bare ValueError from the plugin, at the setup of every test.
#   pytest_plugin.py:82: ValueError: could not convert string to float: '10s'
#   ERROR test_inner.py::test_it - ValueError: could not convert string to float:...
# The CLI's --idle (and the README's `up --shared --idle 30s`) takes `10s`; the ini option
# takes only a bare number and says nothing of which option was wrong.
def test_an_idle_time_with_a_unit_is_taken_or_refused_naming_the_ini_option(pytester):
    file = define(pytester.path)
    pytester.makeini(INI.format(idle="10s"))  # as the CLI's --idle takes it
    pytester.makepyfile(test_inner="def test_it(shared_bundle):\n    pass\n")
    try:
        result = run_inner(pytester)
        out = result.stdout.str() + result.stderr.str()
        # The error's own words (not the plugin's source in the traceback) name the option.
        said = [line for line in out.splitlines() if line.startswith(("E ", "ERROR "))]
        assert result.ret == 0 or any("hitchserve_shared_idle" in line for line in said), out
    finally:
        cli(file, "down")


# -- hitchserve.cli.main in a Python process ------------------------------------------------

MAIN_IN_PROCESS = """
import signal, sys
from hitchserve.cli import main

before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGPIPE))
try:
    main(["-f", sys.argv[1], "status"])
except SystemExit:
    pass
after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGPIPE))
print("SAME" if before == after else f"CHANGED {before} -> {after}")
"""


# Fails today: after `hitchserve.cli.main([...])` returns (SystemExit), Ctrl-C no longer
# raises KeyboardInterrupt in the calling process (a test that calls the CLI in-process, a
# script): it kills it outright, skipping every teardown (and every bundle's shutdown).
#   AssertionError: CHANGED (<built-in function default_int_handler>, <Handlers.SIG_IGN: 1>)
#     -> (<Handlers.SIG_DFL: 0>, <Handlers.SIG_IGN: 1>)
# cli.py:26 sets SIGINT to SIG_DFL and never restores it; for client commands lib.rs:284
# also sets SIGPIPE to SIG_DFL (not visible to signal.getsignal, which reports Python's own
# record, but a later write to a closed pipe then kills the process instead of raising
# BrokenPipeError).
def test_cli_main_called_in_process_leaves_the_signal_handlers_as_they_were(project):
    file = project / "hitchserve.toml"  # no bundle runs: `status` fails, as any command may
    ran = subprocess.run(
        [sys.executable, "-c", MAIN_IN_PROCESS, str(file)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert "SAME" in ran.stdout, ran.stdout + ran.stderr


# -- the relaunched command finds the hitchserve its caller imported -------------------------


ATTACH_THROUGH_SYS_PATH = """
import sys
sys.path.insert(0, sys.argv[1])
import hitchserve
with hitchserve.SharedBundle(sys.argv[2], idle=0) as shared:
    print("STATE", shared.service("App").state)
"""


# Fails today: the relaunched command can't import the package its caller runs.
#   SharedBundleError: shared bundle `.../hitchserve.toml`: .../venv/bin/python: Error while
#   finding module specification for 'hitchserve.cli' (ModuleNotFoundError: No module named
#   'hitchserve')
# shared.py:43 RELAUNCH is `sys.executable -m hitchserve.cli`, run with cwd = the project
# directory (hitchserve/src/shared.rs:180) and the caller's environment: sys.path additions
# that are not in PYTHONPATH are lost, and where another hitchserve is installed for that
# Python, the daemon silently runs that one instead of the caller's.
def test_a_shared_bundle_starts_when_hitchserve_is_imported_through_sys_path(tmp_path, project):
    # A Python that finds hitchserve only through sys.path (pytest's `pythonpath` ini option,
    # a conftest, a zipapp or Bazel runfiles): a venv without the system's site-packages.
    python = tmp_path / "venv" / "bin" / "python"
    venv.create(tmp_path / "venv", with_pip=False)
    lib = tmp_path / "lib"
    for package in (hitchserve, psutil):
        shutil.copytree(os.path.dirname(package.__file__), lib / package.__name__)
    file = define(project)
    try:
        ran = subprocess.run(
            [str(python), "-c", ATTACH_THROUGH_SYS_PATH, str(lib), str(file)],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        assert "STATE ready" in ran.stdout, ran.stdout + ran.stderr
    finally:
        cli(file, "down")


# -- the bundle's daemon keeps no descriptor of its caller's ----------------------------------

ATTACH_AND_EXIT = """
import sys
import hitchserve
hitchserve.SharedBundle(sys.argv[1], idle=600)  # a lease until this process exits
print("ATTACHED", flush=True)
"""


def pipe_holders(fd: int) -> list:
    inode = os.fstat(fd).st_ino
    holders = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():  # ours: the read end
            continue
        try:
            for entry in os.scandir(f"/proc/{proc.pid}/fd"):
                if os.readlink(entry.path) == f"pipe:[{inode}]":
                    holders.append(" ".join(proc.info["cmdline"] or [])[:80])
        except OSError:
            pass
    return holders


# Fails today: the write end stays open in the daemon, the engine's guardian and the service.
#   AssertionError: the caller's pipe is still held by: ['python3 -m hitchserve.cli -f
#   .../hitchserve.toml up --daemon-child --shared --idle 600000ms', '/bin/sh -c ... trap ...
#   hitchserve-guardian', 'tail -n +1 -f said.txt']
# hitchserve/src/shared.rs:174-181 (the `up --shared` command) and hitchserve-cli
# control/up.rs:376-385 (the daemon: only stdio replaced, setsid) pass every inheritable
# descriptor on, and the services inherit them from the daemon. A harness that reads such a
# pipe to its end (or `up --detach` under one) waits for the bundle to stop.
def test_the_bundles_daemon_keeps_no_descriptor_its_caller_inherited(project):
    # A test process given an inheritable pipe (a make jobserver, a harness's status pipe,
    # close_fds=False): once it has exited, its reader must see the end of the pipe, not
    # wait for a bundle that runs on in the background.
    file = define(project)
    read_end, write_end = os.pipe()
    try:
        caller = subprocess.run(
            [sys.executable, "-c", ATTACH_AND_EXIT, str(file)],
            pass_fds=[write_end],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        assert "ATTACHED" in caller.stdout, caller.stderr
        os.close(write_end)
        write_end = -1
        os.set_blocking(read_end, False)
        try:
            ended = os.read(read_end, 1) == b""
        except BlockingIOError:  # another process still holds the write end
            ended = False
        assert ended, f"the caller's pipe is still held by: {pipe_holders(read_end)}"
    finally:
        if write_end != -1:
            os.close(write_end)
        cli(file, "down")
        os.close(read_end)
