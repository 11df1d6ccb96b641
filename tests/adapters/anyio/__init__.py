"""NegotiateStream (anyio) on asyncio and trio, over loopback TCP and in-memory pipes, with real NTLM."""
