"""Adapter tests over real sockets: one package per adapter (asyncio, anyio, sync), plus cross-adapter tests."""
