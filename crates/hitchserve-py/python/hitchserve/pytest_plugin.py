"""The pytest plugin of hitchserve (registered through the ``pytest11`` entry point).

Fixtures:

* ``service_bundle`` -- a fresh :class:`~hitchserve.ServiceBundle` per test, in the test's
  own project directory (``hitchserve_project_directory``, by default the test's
  ``tmp_path``), shut down after the test. Ports reserved with ``Service(ports=[...])`` are
  unique across every test and every pytest-xdist worker.
* ``service_bundle_factory`` -- ``service_bundle_factory(startup_timeout=30, ...)`` for more
  bundles, or other options; each is shut down after the test.
* ``hitchserve_project_directory`` -- override it to run the services in your project.

When a test fails, its report gets a section per bundle with the bundle's last lines and the
path of the run's ``all.log`` (kept after the test).
"""

import os
from typing import Any, Callable, Iterator, List

import pytest

from .bundle import ServiceBundle

#: Lines of a bundle's logs shown in the report of a failed test.
REPORT_LINES = 40

_BUNDLES = pytest.StashKey[List[ServiceBundle]]()


@pytest.fixture
def hitchserve_project_directory(tmp_path: Any) -> str:
    """The project directory the test's bundles use: the test's own ``tmp_path``."""
    return os.fspath(tmp_path)


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed:
        for n, bundle in enumerate(item.stash.get(_BUNDLES, [])):
            title = "hitchserve bundle" + (f" {n + 1}" if n else "")
            report.sections.append((f"{title} ({bundle.project_directory})", _section(bundle)))
    return report
