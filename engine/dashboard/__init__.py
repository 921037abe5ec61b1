"""The web dashboard: see and repair the queues from a browser (``taskharbor dashboard``).

Needs the extra ``taskharbor[dashboard]`` (Starlette, Jinja2, uvicorn).  It
reads and acts through the driver SPI only, so it works on every store; pages
are rendered on the server (charts and graphs as SVG), and the little
JavaScript it has (live refresh, select all) ships in the package.
docs/dashboard.md says how to run it and how to secure it.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "the dashboard needs its extra: pip install 'taskharbor[dashboard]' "
        f"({exc.name} is missing)"
    ) from exc

from .app import create_app
from .security import Guard

__all__ = ["Guard", "create_app"]
