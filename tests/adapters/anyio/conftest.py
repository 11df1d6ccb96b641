"""Fixtures of the anyio stream tests: both backends, both transports (defined once in tests/support/streams.py)."""

from tests.support.streams import anyio_backend, transport

__all__ = ["anyio_backend", "transport"]
