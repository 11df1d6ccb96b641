"""End-to-end tests of the ``negotiate-stream`` command line (real subprocesses, real loopback sockets)."""
