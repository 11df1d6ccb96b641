"""The performance targets (issue 15) and whether one run met them, plus the earlier guards still tracked.

Every target is a ratio the report computed (see ``report``), judged on the numbers of one run:

* 64 B protect + unprotect through our context (``floor.context.sealed-64B``, fast path) >= 0.77x the raw-primitive
  rate (``floor.primitives.sealed-64B``), i.e. at most 1.3x its cost;
* asyncio Protocol sealed ping-pong >= 0.55x plain Protocol ping-pong (one process);
* asyncio streams sealed ping-pong >= 1.0x TLS streams ping-pong (one process);
* asyncio Protocol bulk sealed >= 0.90x the primitives floor in one process, and >= 0.95x the one-way (context)
  floor between two processes (send and receive);
* sign-only (asyncio Protocol bulk sign) >= 0.85x the HMAC floor (``floor.primitives.sign``);
* streaming RSS per endpoint < 64 KiB (the concurrent sealed connections, at the peak while streaming).

Tracked from issue 7, which issue 15 did not replace: the handshake cost against the bare step loop and flat memory
over one long transfer. They are reported apart (``Target.tracked``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report

__all__ = [
    "BULK_PRIMITIVES_RATIO",
    "FLAT_RSS_MIB",
    "HANDSHAKE_COST_RATIO",
    "ONE_WAY_FLOOR_RATIO",
    "PINGPONG_PLAIN_RATIO",
    "PINGPONG_TLS_RATIO",
    "RSS_PER_ENDPOINT_KIB",
    "SIGN_PRIMITIVES_RATIO",
    "SMALL_PRIMITIVES_RATIO",
    "Target",
    "check_targets",
]

SMALL_PRIMITIVES_RATIO = 0.77
PINGPONG_PLAIN_RATIO = 0.55
PINGPONG_TLS_RATIO = 1.0
BULK_PRIMITIVES_RATIO = 0.90
ONE_WAY_FLOOR_RATIO = 0.95
SIGN_PRIMITIVES_RATIO = 0.85
RSS_PER_ENDPOINT_KIB = 64.0
HANDSHAKE_COST_RATIO = 1.30
#: "Flat memory": RSS may move by at most this much (max - min of the samples) over the growth transfer.
FLAT_RSS_MIB = 8.0

_PROTOCOL = "ours.asyncio-protocol"


@dataclass
class Target:
    """One performance target and whether this run met it."""

    name: str
    wanted: str
    measured: str
    met: bool | None  # None: not measured in this run
    #: False for a target of issue 15; True for a guard kept from an earlier issue (reported apart).
    tracked: bool = False


def _ratio_targets(
    report: Report,
    title: str,
    names: list[str],
    key: str,
    *,
    at_least: float = 0.0,
    at_most: float = 0.0,
    wanted: str = "",
    tracked: bool = False,
) -> list[Target]:
    """One target per scenario of ``names`` that has ratio ``key``: ``>= at_least`` (or ``<= at_most``)."""
    wanted = wanted or (f">= {at_least:.2f}x" if at_least else f"<= {at_most:.2f}x")
    found = [(n, r) for n in names if (r := report.get(n)) is not None and key in r.ratios]
    if not found:
        return [Target(title, wanted, "not measured", None, tracked)]
    targets = []
    for name, result in found:
        ratio = result.ratios[key]
        met = ratio >= at_least if at_least else ratio <= at_most
        targets.append(Target(f"{title}: {name}", wanted, f"{ratio:.2f}x", met, tracked))
    return targets


def _rss_targets(report: Report) -> list[Target]:
    wanted = f"< {RSS_PER_ENDPOINT_KIB:.0f} KiB"
    concurrent = [r for r in report.results if r.kind == "concurrent" and r.group == "ours" and r.ok]
    targets = []
    for result in concurrent:
        per_end = float(result.extra.get("rss_kib_per_end", 0.0))
        title = f"streaming RSS per endpoint: {result.name}"
        targets.append(Target(title, wanted, f"{per_end:.1f} KiB", per_end < RSS_PER_ENDPOINT_KIB))
    return targets or [Target("streaming RSS per endpoint", wanted, "not measured", None)]


def _tracked(report: Report) -> list[Target]:
    """The guards of issue 7 that issue 15 did not replace: handshake cost and flat memory."""
    handshakes = ["ours.asyncio-streams.handshake", "ours.asyncio-protocol.handshake"]
    in_memory_too = ["ours.connection-in-memory.handshake", *handshakes]
    targets = _ratio_targets(
        report,
        "handshake cost vs bare step loop",
        in_memory_too,
        "cost_vs_step_loop",
        at_most=HANDSHAKE_COST_RATIO,
        tracked=True,
    )
    targets += _ratio_targets(
        report,
        "handshake cost without TCP connect + close vs bare step loop",
        handshakes,
        "cost_excl_tcp",
        at_most=HANDSHAKE_COST_RATIO,
        tracked=True,
    )
    wanted = f"max - min RSS <= {FLAT_RSS_MIB:.0f} MiB"
    growth = report.get("ours.asyncio-streams.growth.sealed")
    if growth is None:
        return [*targets, Target("flat memory", wanted, "not measured", None, True)]
    spread = float(growth.extra.get("rss_spread_mib", 0.0))
    title = f"flat memory over {growth.nbytes / 2**30:.2f} GiB"
    return [*targets, Target(title, wanted, f"{spread:.2f} MiB", spread <= FLAT_RSS_MIB, True)]


def check_targets(report: Report) -> list[Target]:
    """Every target of issue 15, in the order of the issue, then the tracked guards; judged on ``report``."""
    small_wanted = f">= {SMALL_PRIMITIVES_RATIO:.2f}x (<= {1 / SMALL_PRIMITIVES_RATIO:.2f}x its cost)"
    wanted: list[tuple[str, str, list[str], float, str]] = [  # (title, ratio, scenarios, at least, wanted text)
        (
            "64 B protect + unprotect through our context vs the raw-primitive rate",
            "primitives",
            ["floor.context.sealed-64B"],
            SMALL_PRIMITIVES_RATIO,
            small_wanted,
        ),
        (
            "asyncio Protocol sealed ping-pong vs plain Protocol ping-pong",
            "plain",
            [f"{_PROTOCOL}.pingpong.sealed"],
            PINGPONG_PLAIN_RATIO,
            "",
        ),
        (
            "asyncio streams sealed ping-pong vs TLS streams ping-pong",
            "tls",
            ["ours.asyncio-streams.pingpong.sealed"],
            PINGPONG_TLS_RATIO,
            "",
        ),
        (
            "asyncio Protocol bulk sealed, one process, vs primitives floor",
            "primitives",
            [f"{_PROTOCOL}.bulk.sealed"],
            BULK_PRIMITIVES_RATIO,
            "",
        ),
        (
            "asyncio Protocol bulk sealed, two processes, vs one-way crypto floor",
            "one_way_floor",
            [f"{_PROTOCOL}.2proc-send.sealed", f"{_PROTOCOL}.2proc-receive.sealed"],
            ONE_WAY_FLOOR_RATIO,
            "",
        ),
        (
            "sign-only (asyncio Protocol bulk) vs HMAC floor",
            "primitives",
            [f"{_PROTOCOL}.bulk.sign"],
            SIGN_PRIMITIVES_RATIO,
            "",
        ),
    ]
    targets: list[Target] = []
    for title, key, names, at_least, text in wanted:
        targets += _ratio_targets(report, title, names, key, at_least=at_least, wanted=text)
    return targets + _rss_targets(report) + _tracked(report)
