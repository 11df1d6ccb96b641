"""Tests of the anyio and blocking-socket adapters, and of the adapters talking to each other."""
