"""``python -m negotiate_stream._bench``: the CLI, ``--child NAME --config JSON`` for one isolated scenario, or
``--peer SPEC`` for the far end of a two-process scenario."""

from __future__ import annotations

import json
import sys

from . import run_child
from ._core import BenchConfig


def _child(argv: list[str]) -> int:
    name = argv[argv.index("--child") + 1]
    config = BenchConfig(**{**json.loads(argv[argv.index("--config") + 1])})
    config = BenchConfig(**{**config.__dict__, "concurrent": tuple(config.concurrent)})
    print(json.dumps(run_child(name, config).to_json()))
    return 0


if __name__ == "__main__":
    if "--peer" in sys.argv:
        from ._split_peer import main as peer_main

        sys.exit(peer_main(sys.argv[sys.argv.index("--peer") + 1]))
    if "--child" in sys.argv:
        sys.exit(_child(sys.argv))
    from ..cli.bench import main

    sys.exit(main(sys.argv[1:]))
