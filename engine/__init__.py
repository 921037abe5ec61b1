"""TaskHarbor: background jobs and small durable workflows with one strict contract."""

__version__ = "0.1.0"
