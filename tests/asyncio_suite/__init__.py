"""asyncio adapter tests over real loopback sockets."""
