"""Run these anyio tests on both backends (the one fixture lives in tests/support/streams.py)."""

from tests.support.streams import anyio_backend

__all__ = ["anyio_backend"]
