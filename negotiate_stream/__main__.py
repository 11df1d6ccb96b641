"""``python -m negotiate_stream``: the same as the ``negotiate-stream`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
