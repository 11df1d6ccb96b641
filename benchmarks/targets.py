"""The performance targets (issue 7) and whether one run met them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .registry import APIS

if TYPE_CHECKING:
    from .report import Report

__all__ = [
    "BULK_FLOOR_RATIO",
    "FLAT_RSS_MIB",
    "HANDSHAKE_COST_RATIO",
    "PINGPONG_PLAIN_RATIO",
    "RSS_PER_CONNECTION_KIB",
    "Target",
    "check_targets",
]

BULK_FLOOR_RATIO = 0.90
PINGPONG_PLAIN_RATIO = 0.80
HANDSHAKE_COST_RATIO = 1.30
RSS_PER_CONNECTION_KIB = 100.0
#: "Flat memory": RSS may move by at most this much (max - min of the samples) over the growth transfer.
FLAT_RSS_MIB = 8.0


@dataclass
class Target:
    """One performance target of the issue and whether this run met it."""

    name: str
    wanted: str
    measured: str
    met: bool | None  # None: not measured in this run


def _ratio_targets(
    report: Report, title: str, names: list[str], key: str, *, at_least: float = 0.0, at_most: float = 0.0
) -> list[Target]:
    """One target per scenario of ``names`` that has ratio ``key``: ``>= at_least`` (or ``<= at_most``)."""
    wanted = f">= {at_least:.2f}x" if at_least else f"<= {at_most:.2f}x"
    found = [(n, r) for n in names if (r := report.get(n)) is not None and key in r.ratios]
    if not found:
        return [Target(title, wanted, "not measured", None)]
    targets = []
    for name, result in found:
        ratio = result.ratios[key]
        met = ratio >= at_least if at_least else ratio <= at_most
        targets.append(Target(f"{title}: {name}", wanted, f"{ratio:.2f}x", met))
    return targets


def _memory_targets(report: Report) -> list[Target]:
    targets: list[Target] = []
    wanted = f"< {RSS_PER_CONNECTION_KIB:.0f} KiB"
    concurrent = [r for r in report.results if r.kind == "concurrent" and r.group == "ours" and r.ok]
    for result in concurrent:
        per = float(result.extra.get("rss_kib_per_connection", 0.0))
        targets.append(
            Target(f"RSS per sealed connection: {result.name}", wanted, f"{per:.1f} KiB", per < RSS_PER_CONNECTION_KIB)
        )
    if not concurrent:
        targets.append(Target("RSS per sealed connection", wanted, "not measured", None))
    wanted = f"max - min RSS <= {FLAT_RSS_MIB:.0f} MiB"
    growth = report.get("ours.asyncio-streams.growth.sealed")
    if growth is None:
        targets.append(Target("flat memory", wanted, "not measured", None))
    else:
        spread = float(growth.extra.get("rss_spread_mib", 0.0))
        targets.append(
            Target(
                f"flat memory over {growth.nbytes / 2**30:.2f} GiB", wanted, f"{spread:.2f} MiB", spread <= FLAT_RSS_MIB
            )
        )
    return targets


def check_targets(report: Report) -> list[Target]:
    """Every target, in report order, judged on ``report``'s ratios and extras."""
    targets: list[Target] = []

    def ratios(title: str, key: str, names: list[str], **bound: float) -> None:
        targets.extend(_ratio_targets(report, title, names, key, **bound))

    for level, what in (("sealed", "bulk sealed"), ("sign", "bulk sign-only")):
        bulk = [f"ours.{api}.bulk.{level}" for api in APIS]
        ratios(f"{what} vs crypto floor ({level})", "floor", bulk, at_least=BULK_FLOOR_RATIO)
        two_process = [f"ours.{api}.2proc-{mode}.{level}" for mode in ("send", "receive") for api in APIS]
        ratios(
            f"{what}, two processes, vs one-way crypto floor", "one_way_floor", two_process, at_least=BULK_FLOOR_RATIO
        )
    for kind, where in (("2proc-pingpong", ", two processes,"), ("pingpong", "")):
        pingpong = [f"ours.{api}.{kind}.sealed" for api in APIS]
        ratios(f"64 B ping-pong (sealed){where} vs plain", "plain", pingpong, at_least=PINGPONG_PLAIN_RATIO)
    handshakes = ["ours.asyncio-streams.handshake", "ours.asyncio-protocol.handshake"]
    in_memory_too = ["ours.connection-in-memory.handshake", *handshakes]
    ratios("handshake cost vs bare step loop", "cost_vs_step_loop", in_memory_too, at_most=HANDSHAKE_COST_RATIO)
    without_tcp = "handshake cost without TCP connect + close vs bare step loop"
    ratios(without_tcp, "cost_excl_tcp", handshakes, at_most=HANDSHAKE_COST_RATIO)
    return targets + _memory_targets(report)
