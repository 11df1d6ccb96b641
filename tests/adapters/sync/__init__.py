"""NegotiateSocket (blocking) over real loopback TCP sockets with real NTLM, including threads."""
