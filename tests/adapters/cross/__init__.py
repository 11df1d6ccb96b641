"""The adapters interoperate: anyio, asyncio and blocking sockets talk to each other over loopback TCP."""
