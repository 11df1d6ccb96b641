"""Helpers shared by the test layers (one place): real contexts, sockets and peers, never mocks."""
