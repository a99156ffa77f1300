"""Review 6: a process forked (``os.fork()``) from one whose bundle is running.

The library makes a forked child's pool and guardian state its own (``perprocess``): the
parent's threads, guardian and services are the parent's. The bundle object the child
inherits is still the parent's too, so letting go of it in the child (leaving the ``with``
block it was forked in, as ``sys.exit()`` there does, or the child's garbage collector) must
neither stop the parent's services nor wait for threads that exist only in the parent.
"""

import os
import select
import signal

import hitchserve
from conftest import PATIENCE, READY_THEN_WAIT, py


def _end_within(pid: int, seconds: float) -> bool:
    """Whether our child ``pid`` ended within ``seconds`` (SIGKILLed and reaped if not)."""
    fd = os.pidfd_open(pid)
    try:
        ended = bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)
    if not ended:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return ended


# Failed before the fix, with:
#   AssertionError: the forked child hung letting go of its copy of the parent's bundle
#   (and before hanging it sent SIGTERM to the parent's service: the parent's bundle
#   printed "[Hitch] WARNING: `Sleeper` exited unexpectedly (signal 15 (SIGTERM))")
# Why: Bundle's drop/shutdown has no notion of the process that owns it. In the child it
# signals the services' groups (the parent's, by pid), then waits for the supervisor
# threads' `Done`s, whose threads exist only in the parent: nobody ever drops those senders
# in the child, so the wait never ends.
def test_a_forked_child_leaving_the_bundles_with_block_neither_stops_the_parents_services_nor_hangs(project):
    bundle = hitchserve.ServiceBundle(str(project), startup_timeout=PATIENCE, shutdown_timeout=1.0)
    bundle["Sleeper"] = hitchserve.Service(
        command=py(READY_THEN_WAIT), log_line_ready_checker=lambda line: line == "READY"
    )
    with bundle:
        bundle.startup()
        service = bundle["Sleeper"].pid
        child = os.fork()
        if child == 0:
            # The child: does its work, then leaves the `with` block it inherited (what
            # `sys.exit()` or returning does there). Never returns into pytest.
            try:
                bundle.__exit__(None, None, None)
            finally:
                os._exit(0)
        # Generous: letting go of a copy should take no time at all.
        ended = _end_within(child, 20.0)
        try:
            os.kill(service, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert ended, "the forked child hung letting go of its copy of the parent's bundle"
        assert alive, "the forked child stopped the parent's service"
        # The parent's bundle still has it running.
        assert bundle["Sleeper"].pid == service


#: Starts a bundle whose service floods stdout, which nobody reads yet, until one of this
#: process's threads (a reader printing the service's lines, holding Rust's stdout lock) is
#: blocked in write(1, ...) — or, since printing waits for room rather than blocking in a
#: write, until stdout is full; then forks a child that starts (and stops) a bundle of its
#: own, and says on stderr whether that child ended.
FORK_WHILE_PRINTING = """
import glob, os, select, signal, sys, time
import hitchserve
project, fifo = sys.argv[1], sys.argv[2]
flood = (
    "import sys, time\\n"
    "print('READY', flush=True)\\n"
    "open(sys.argv[1]).read()\\n"
    "for i in range(20000): print('x' * 60)\\n"
    "sys.stdout.flush()\\n"
    "while True: time.sleep(3600)\\n"
)
bundle = hitchserve.ServiceBundle(project, startup_timeout=60, shutdown_timeout=5.0)
bundle["Flood"] = hitchserve.Service(
    command=[sys.executable, "-u", "-c", flood, fifo],
    log_line_ready_checker=lambda line: line == "READY",
)
bundle.startup()
with open(fifo, "w") as f:
    f.write("go")

def a_thread_blocked_writing_stdout():
    for path in glob.glob("/proc/self/task/*/syscall"):
        try:
            words = open(path).read().split()
        except OSError:
            continue
        if words[:2] == ["1", "0x1"]:
            return True
    return False

def stdout_full():
    return not select.select([], [1], [], 0)[1]

# A reader inside a write (before printing waited for room, it blocked there), or stdout
# full (now a reader waits for room before it writes: none is inside a write).
deadline = time.monotonic() + 60
while not (a_thread_blocked_writing_stdout() or stdout_full()):
    assert time.monotonic() < deadline, "no reader blocked on stdout"
    select.select([], [], [], 0.01)
child = os.fork()
if child == 0:
    try:
        own = hitchserve.ServiceBundle(project, startup_timeout=60)
        own["Quiet"] = hitchserve.Service(
            command=["sh", "-c", "echo READY; exec sleep 1000"],
            log_line_ready_checker=lambda line: line == "READY",
        )
        own.startup()
        own.shutdown()
    finally:
        os._exit(0)
sys.stderr.write("FORKED\\n")
fd = os.pidfd_open(child)
# (Longer than the child's own startup timeout: a loaded machine may take that long.)
ended = bool(select.select([fd], [], [], 120)[0])
if not ended:
    os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
sys.stderr.write("CHILD ENDED\\n" if ended else "CHILD HUNG\\n")
bundle.shutdown()
"""


# Failed before the fix, with:
#   AssertionError: the forked child hung at its own bundle's first print
#   assert 'CHILD ENDED' in 'FORKED\nCHILD HUNG\n'
# (The same script with stdout drained from the start, so that no reader is inside a
# print at the fork, says CHILD ENDED.)
# Why: the bundle's reader threads print services' lines with `print!`, which holds std's
# process-wide stdout lock while it writes. A child forked while a reader is inside a write
# (a slow or full stdout: a CI log pipe, a pager) inherits that lock held by a thread that
# doesn't exist in it, and its own bundle's first line ("Starting Quiet") waits for it for
# ever. The same class of hang this change fixed for the pool's and the guardian's locks
# (`perprocess`), left for the console; a `multiprocessing` (fork) worker that starts a
# bundle meets it whenever the parent's services are printing at the fork.
def test_a_child_forked_while_a_reader_prints_can_start_a_bundle_of_its_own(project, tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = subprocess.Popen(
        [sys.executable, "-u", "-c", FORK_WHILE_PRINTING, str(project), str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert script.stderr is not None
        # Stdout is left unread (full) until the script has forked.
        said = ""
        for line in script.stderr:
            said += line
            if "FORKED" in line or "Error" in line:
                break
        _, err = script.communicate(timeout=2 * PATIENCE)
        said += err
    finally:
        script.kill()
        script.wait()
    assert "CHILD ENDED" in said, "the forked child hung at its own bundle's first print"
