"""hitchserve: start, watch, time-travel and stop the real services an integration test needs.

The generic service API of the original Python hitchserve, on the Rust engine::

    import hitchserve

    bundle = hitchserve.ServiceBundle(project_directory=".", startup_timeout=15.0)
    bundle["Web"] = hitchserve.Service(
        command=["python3", "-u", "-m", "http.server", "8000"],
        log_line_ready_checker=lambda line: "Serving HTTP" in line,
    )
    with bundle:
        bundle.startup()
        print(bundle["Web"].logs)

Ready-made services are in :mod:`hitchserve.services`; the pytest fixture
``service_bundle`` comes with the package. A bundle shared by every test process of a run
(pytest-xdist workers, other languages' tests) is a :class:`SharedBundle`, from a
``hitchserve.toml`` (the ``hitchserve`` command's file).
"""

from . import _native
from .bundle import ServiceBundle
from .errors import (
    DefinitionError,
    ExitedDuringStartup,
    LogEnded,
    LogTimeout,
    NoSuchProcess,
    NoSuchService,
    NotRunning,
    ServiceError,
    ServiceExited,
    SharedBundleError,
    StartupError,
    StartupTimeout,
    SubcommandFailed,
    TimeTravelError,
)
from .logs import Follow, LogLine, Logs, Tail
from .service import Service, Subcommand
from .shared import SharedBundle, SharedLine, SharedService, SharedTail

# `hitchserve.services.Smtp()` after a plain `import hitchserve`, as the README writes it.
from . import services  # noqa: E402  (after the names it imports from this package)

__all__ = [
    "ServiceBundle",
    "Service",
    "Subcommand",
    "Logs",
    "LogLine",
    "Tail",
    "Follow",
    "SharedBundle",
    "SharedService",
    "SharedTail",
    "SharedLine",
    "ServiceError",
    "DefinitionError",
    "StartupError",
    "StartupTimeout",
    "ServiceExited",
    "ExitedDuringStartup",
    "LogTimeout",
    "LogEnded",
    "SubcommandFailed",
    "NotRunning",
    "NoSuchService",
    "NoSuchProcess",
    "TimeTravelError",
    "SharedBundleError",
    "services",
]
