"""Optional integrations, each behind its extra: ``import taskharbor`` needs none of them.

* :mod:`taskharbor.contrib.prometheus` (``pip install 'taskharbor[prometheus]'``):
  Prometheus metrics of outcomes, latencies, the store's queues and the workers;
* :mod:`taskharbor.contrib.otel` (``pip install 'taskharbor[otel]'``): OpenTelemetry
  traces from the enqueue to each attempt, across processes;
* :mod:`taskharbor.contrib.fastapi` (``pip install 'taskharbor[fastapi]'``): a FastAPI
  lifespan, and enqueue in a SQLAlchemy session's transaction;
* :mod:`taskharbor.contrib.django` (``pip install 'taskharbor[django]'``): settings,
  an app, ``manage.py taskharbor``, enqueue on Django's connection;
* :mod:`taskharbor.contrib.pydantic` (``pip install 'taskharbor[pydantic]'``): pydantic
  models as task arguments and results, used by the default codec by itself.

Each module imports its third-party library only inside itself, and says which extra
to install when the library is missing (:func:`missing`).
"""

from __future__ import annotations


def missing(library: str, extra: str, integration: str) -> ImportError:
    """The error an integration raises when its library is not installed: it names the
    extra that installs it."""
    return ImportError(f"{integration} needs {library}: pip install 'taskharbor[{extra}]'")
