"""The Django app of the integration: ``INSTALLED_APPS += ["taskharbor.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class TaskHarborConfig(AppConfig):
    """Brings the ``taskharbor`` management command; it has no models."""

    name = "taskharbor.contrib.django"
    label = "taskharbor"
    verbose_name = "TaskHarbor"
