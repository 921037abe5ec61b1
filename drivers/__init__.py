"""Storage drivers: each implements :class:`taskharbor.spec.spi.Driver`, importing only the spec."""
