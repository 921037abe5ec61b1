"""A shop whose orders are charged and shipped by TaskHarbor jobs."""
