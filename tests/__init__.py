"""The test suite. Shared helpers live in :mod:`tests.support`; shared fixtures in ``conftest.py``."""
