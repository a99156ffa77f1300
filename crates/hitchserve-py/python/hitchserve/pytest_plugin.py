"""The pytest plugin of hitchserve (registered through the ``pytest11`` entry point).

Fixtures:

* ``service_bundle`` -- a fresh :class:`~hitchserve.ServiceBundle` per test, in the test's
  own project directory (``hitchserve_project_directory``), shut down after the test. Ports reserved with ``Service(ports=[...])`` are
  unique across every test and every pytest-xdist worker.
* ``service_bundle_factory`` -- ``service_bundle_factory(startup_timeout=30, ...)`` for more
  bundles, or other options; each is shut down after the test.
* ``hitchserve_project_directory`` -- by default a fresh directory of the test's own, mode
  0711 outside pytest's 0700 ``tmp_path`` tree, so services that run as another user
  (``Postgres`` as root runs as ``postgres``; ``Service(user=...)``) can reach it; removed
  after a test that passed. Override it to run the services in your project.

When a test fails, its report gets a section per bundle with the bundle's last lines and the
path of the run's ``all.log``, and the project directory is kept.

A bundle shared by the whole run (:class:`~hitchserve.SharedBundle`: started once, however
many pytest-xdist workers or other test processes use it), from a ``hitchserve.toml`` named
in the ini file::

    [pytest]
    hitchserve_shared_file = tests/hitchserve.toml
    hitchserve_shared_idle = 10

(the file relative to the rootdir; the seconds the bundle outlives its last user)

* ``hitchserve_shared_bundle`` -- session scope: this process's lease (one per xdist worker,
  every worker attached to the one bundle), released at the end of the session.
* ``shared_bundle`` -- the test's own view of it: a lease taken when the test starts, so its
  ``logs()``, tails and ``report()`` see only the lines written during the test. When the
  test fails, its report gets those lines and the path of the run's ``all.log``.

Time travel in a shared bundle moves every worker's clock: it is refused while another
process holds the bundle.
"""

import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, List, Optional

import pytest

from . import _native
from .bundle import ServiceBundle
from .shared import SharedBundle

#: Lines of a bundle's logs shown in the report of a failed test.
REPORT_LINES = 40

_BUNDLES = pytest.StashKey[List[ServiceBundle]]()
#: Set when the test failed in any phase: its project directory (and all.log) is kept.
_FAILED = pytest.StashKey[bool]()
#: The test's own view of the shared bundle (``shared_bundle``), for its failure report.
_SHARED = pytest.StashKey[SharedBundle]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "hitchserve_shared_file",
        "the hitchserve.toml of the bundle shared by the run (fixtures hitchserve_shared_bundle "
        "and shared_bundle), relative to the rootdir",
    )
    parser.addini(
        "hitchserve_shared_idle",
        "how long the shared bundle runs on once no test process holds it: seconds or a "
        "duration such as 500ms, 10s, 2m (default 10s)",
    )


def _shared_file(config: pytest.Config) -> str:
    name = config.getini("hitchserve_shared_file")
    if not name:
        raise pytest.UsageError(
            "the hitchserve_shared_file ini option names no file: set it to the "
            "hitchserve.toml of the shared bundle (relative to the rootdir)"
        )
    return os.path.join(str(config.rootpath), name)


def _shared_idle(config: pytest.Config) -> Optional[float]:
    """``hitchserve_shared_idle``: what the CLI's ``--idle`` takes — ``0``, seconds (``10``)
    or a number and a unit (``500ms``, ``2m``, ``1h30m``, ``2d``, ``5 minutes``)."""
    idle = str(config.getini("hitchserve_shared_idle") or "").strip()
    if not idle:
        return None
    try:
        # A plain number of seconds as Python reads one (`.5`, `1e1`, `0.0`)...
        seconds = float(idle)
    except ValueError:
        # ... or a duration as the CLI's --idle reads it.
        try:
            seconds = _native.idle_seconds(idle)
        except ValueError as e:
            why = str(e).removeprefix("--idle: ")
            raise pytest.UsageError(f"hitchserve_shared_idle = {idle!r}: {why}") from None
    # As the CLI's --idle: 0 up to 100 years.
    if not 0 <= seconds <= 36500 * 86400:
        raise pytest.UsageError(
            f"hitchserve_shared_idle = {idle!r}: give 0 or more seconds, at most 36500d"
        )
    return seconds


@pytest.fixture(scope="session")
def hitchserve_shared_bundle(pytestconfig: pytest.Config) -> Iterator[SharedBundle]:
    """This process's lease on the bundle shared by the run (``hitchserve_shared_file``):
    started by the first process that asks, attached to by the others (every pytest-xdist
    worker), released at the end of the session."""
    with SharedBundle(_shared_file(pytestconfig), idle=_shared_idle(pytestconfig)) as shared:
        yield shared


@pytest.fixture
def shared_bundle(
    request: pytest.FixtureRequest, hitchserve_shared_bundle: SharedBundle
) -> Iterator[SharedBundle]:
    """The test's own view of the shared bundle: a lease taken as it starts (over the
    session's socket: no command is run), so its logs, tails and failure report hold only
    the lines written since, and a time travel it makes is undone after it."""
    with hitchserve_shared_bundle.view() as view:
        request.node.stash[_SHARED] = view
        yield view


@pytest.fixture
def hitchserve_project_directory(request: pytest.FixtureRequest) -> Iterator[str]:
    """The project directory the test's bundles use: a fresh one, reachable by services
    that run as other users (pytest's own ``tmp_path`` is under a 0700 directory), removed
    after the test unless it failed."""
    path = tempfile.mkdtemp(prefix="hitchserve-test-")
    os.chmod(path, 0o711)  # others may pass through (not list): services run as other users
    yield path
    if not request.node.stash.get(_FAILED, False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_bundle_factory(
    request: pytest.FixtureRequest, hitchserve_project_directory: str
) -> Iterator[Callable[..., ServiceBundle]]:
    """Make bundles (``ServiceBundle`` arguments; the project directory defaults to the
    test's), each shut down after the test."""
    made: List[ServiceBundle] = request.node.stash.setdefault(_BUNDLES, [])

    def make(project_directory: Any = None, **kwargs: Any) -> ServiceBundle:
        bundle = ServiceBundle(project_directory or hitchserve_project_directory, **kwargs)
        made.append(bundle)
        return bundle

    yield make
    errors = []
    for bundle in made:
        try:
            bundle.shutdown()
        except Exception as e:  # a crash after startup: fail the test's teardown with it
            errors.append(e)
    if errors:
        request.node.stash[_FAILED] = True  # keep the project directory and its all.log
        raise errors[0]


@pytest.fixture
def service_bundle(service_bundle_factory: Callable[..., ServiceBundle]) -> ServiceBundle:
    """A fresh bundle for this test, shut down after it."""
    return service_bundle_factory()


def _section(bundle: ServiceBundle) -> str:
    try:
        lines = [line.console for line in bundle.logs.last(REPORT_LINES)]
    except Exception as e:  # never hide the test's own failure
        lines = [f"(could not read the logs: {e})"]
    where = bundle.all_log or "(the bundle was not started: no all.log)"
    return "\n".join([f"last {len(lines)} lines:"] + lines + [f"all.log: {where}"])


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Once the test itself is done, its bundles stop printing (their lines are still
    stored, and a failed test's report shows them): between the test and its teardown
    pytest's capture is off, and a line a service wrote then reached the terminal."""
    try:
        return (yield)
    finally:
        capturing = item.config.getoption("capture", "fd") != "no"
        for bundle in item.stash.get(_BUNDLES, []) if capturing else []:
            try:
                bundle.start_interactive_mode()
            except Exception:  # starting up on another thread: nothing to mute yet
                pass


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
        bundles: List[ServiceBundle] = item.stash.get(_BUNDLES, [])
        for n, bundle in enumerate(bundles):
            title = "hitchserve bundle" + (f" {n + 1}" if n else "")
            report.sections.append((f"{title} ({bundle.project_directory})", _section(bundle)))
        shared = item.stash.get(_SHARED, None)
        if shared is not None:
            try:
                said = shared.report(REPORT_LINES)
            except Exception as e:  # released already (a failed teardown): never hide the failure
                said = f"(could not read the shared bundle's lines: {e})\nall.log: {shared.all_log}"
            report.sections.append((f"hitchserve shared bundle ({shared.file})", said))
    return report
