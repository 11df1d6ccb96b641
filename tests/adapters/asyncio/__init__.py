"""asyncio adapter tests over real loopback sockets: Protocol API, streams API, failures, reliability."""
