"""The conformance suite: one example-based test per rule of the contract."""
