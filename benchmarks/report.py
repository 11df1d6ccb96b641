"""Ratios to the floors and baselines, and the table / JSON / PNG renderings of one benchmark run."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from .config import BenchConfig
from .paths import PYSPNEGO_SUFFIX
from .results import Result
from .targets import Target, check_targets

__all__ = ["Report", "machine_info"]


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and OS of this machine, and the load average when the run started."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
    }


def _baseline_for(result: Result) -> str | None:
    """The plain baseline of the same API family: ``ours.anyio-trio.bulk.sealed`` -> ``baseline.anyio-trio.bulk``."""
    parts = result.name.split(".")
    if result.group not in ("ours", "alternative") or len(parts) < 3:
        return None
    api, kind = parts[1], parts[2]
    plain_api = {"jetblack": "asyncio-streams"}.get(api, api)
    return f"baseline.{plain_api}.{kind}"


#: The TLS baseline of the same API: our asyncio streams against TLS streams, our Protocol against TLS Protocols.
_TLS_APIS = {"asyncio-streams": "tls-streams", "asyncio-protocol": "tls-protocol"}


def _tls_baseline_for(result: Result) -> str | None:
    """``ours.asyncio-streams.pingpong.sealed`` -> ``baseline.tls-streams.pingpong`` (asyncio APIs only)."""
    parts = result.name.split(".")
    if result.group != "ours" or len(parts) < 3 or parts[1] not in _TLS_APIS:
        return None
    return f"baseline.{_TLS_APIS[parts[1]]}.{parts[2]}"


def _path_suffix(result: Result) -> str:
    """``.pyspnego-path`` for a scenario measured on pyspnego's NTLM record path, else empty: its floors (and its
    ceilings) are the context floors measured on the same path."""
    return PYSPNEGO_SUFFIX if result.name.endswith(PYSPNEGO_SUFFIX) else ""


@dataclass
class Report:
    """All results of one run, with ratios and target checks; render with :meth:`table` or :meth:`to_json`."""

    config: BenchConfig
    results: list[Result]
    machine: dict[str, Any] = field(default_factory=machine_info)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self._compute_ratios()
        self.targets = check_targets(self)

    def get(self, name: str) -> Result | None:
        """The result called ``name`` if it ran successfully."""
        for result in self.results:
            if result.name == name and result.ok:
                return result
        return None

    def _value(self, name: str) -> float | None:
        result = self.get(name)
        return result.value if result is not None else None

    def io_ceiling(
        self, level: str, plain_name: str = "baseline.asyncio-protocol.bulk", path_suffix: str = ""
    ) -> float | None:
        """The best a single-threaded loopback can do at ``level`` with one API: crypto floor plus that API's I/O.

        ``1 / (1 / floor + 1 / plain)``: both ends' crypto *and* both ends' socket work run on one thread, so even a
        zero-overhead adapter pays what the same API costs without Negotiate (``plain_name``, a bulk baseline).
        Threaded APIs (sync) can beat it, since the crypto releases the GIL and the two ends run on two cores.
        ``path_suffix`` selects the floor of pyspnego's record path.
        """
        floor = self._value(f"floor.context.{level}{path_suffix}")
        plain = self._value(plain_name)
        if not floor or not plain:
            return None
        return 1.0 / (1.0 / floor + 1.0 / plain)

    def _compute_ratios(self) -> None:
        step_loop = self.get("floor.handshake.step-loop")
        for result in self.results:
            if not result.ok or result.value is None:
                continue
            suffix = _path_suffix(result)
            if result.kind in ("bulk", "concurrent") and result.level in ("sealed", "sign"):
                for key, floor_name in (
                    ("floor", f"floor.context.{result.level}{suffix}"),
                    ("primitives", f"floor.primitives.{result.level}"),
                ):
                    floor = self._value(floor_name)
                    if floor:
                        result.ratios[key] = round(result.value / floor, 3)
                plain_name = _baseline_for(result) or "baseline.asyncio-protocol.bulk"
                if result.kind == "bulk" and "connection-in-memory" not in result.name:
                    ceiling = self.io_ceiling(result.level, plain_name, suffix)
                    if ceiling:
                        result.ratios["io_ceiling"] = round(result.value / ceiling, 3)
            self._floor_ratios(result)
            baseline_name = _baseline_for(result)
            baseline = self._value(baseline_name) if baseline_name else None
            if baseline and result.kind in ("bulk", "pingpong"):
                result.ratios["plain"] = round(result.value / baseline, 3)
            tls_name = _tls_baseline_for(result)
            tls = self._value(tls_name) if tls_name else None
            if tls and result.kind in ("bulk", "pingpong") and result.level != "none":
                result.ratios["tls"] = round(result.value / tls, 3)
            twin = self._value(result.name + PYSPNEGO_SUFFIX)
            if twin:
                # The fast path's speed-up over pyspnego's record path, measured side by side in this run.
                result.ratios["vs_pyspnego_path"] = round(result.value / twin, 3)
            small = self.get(f"floor.context.sealed-64B{suffix}")
            if result.kind == "pingpong" and result.level == "sealed" and baseline and small and small.value:
                # Best possible: the plain round trip plus two 64-byte messages through both ends' crypto.
                ceiling = 1.0 / (1.0 / baseline + 2.0 / small.value)
                result.ratios["io_ceiling"] = round(result.value / ceiling, 3)
            if result.kind == "handshake" and step_loop is not None and step_loop.value and result is not step_loop:
                # A cost ratio: time per handshake relative to the bare step loop (lower is better).
                result.ratios["cost_vs_step_loop"] = round(step_loop.value / result.value, 3)
                connect = self._value("baseline.asyncio-streams.connect")
                if connect and result.name.startswith("ours.asyncio-"):
                    # The same, without the TCP connect + close that the plain baseline pays too (same run).
                    handshake_only = 1.0 / result.value - 1.0 / connect
                    if handshake_only > 0:
                        result.ratios["cost_excl_tcp"] = round(handshake_only * step_loop.value, 3)
            if result.kind.startswith("2proc-"):
                self._two_process_ratios(result)
            # Measured interleaved with its baseline (runner.PAIRED): that ratio is the one to trust.
            result.ratios.update(result.extra.get("paired_ratios", {}))

    def _floor_ratios(self, result: Result) -> None:
        """Context floors against the raw primitives; Kerberos layers against python-gssapi's own functions."""
        assert result.value is not None
        if result.name.startswith("floor.context."):
            level = "sealed-64B" if result.kind == "crypto-small" else result.level
            primitives = self._value(f"floor.primitives.{level}")
            if primitives:
                result.ratios["primitives"] = round(result.value / primitives, 3)
        if result.kind == "crypto-kerberos":
            gssapi = float(result.extra.get("gssapi_us_per_message", 0.0))
            if gssapi > 0:
                # Cost ratios (time per message / gssapi's time per message): lower is better, 1.0 = no overhead.
                result.ratios["cost_vs_gssapi"] = round(float(result.extra["us_per_message"]) / gssapi, 3)
                pyspnego = float(result.extra.get("pyspnego_us_per_message", 0.0))
                result.ratios["pyspnego_vs_gssapi"] = round(pyspnego / gssapi, 3)

    def one_way_floor(self, level: str) -> float | None:
        """The crypto floor when each end has its own core: bytes / max(protect time, unprotect time)."""
        floor = self.get(f"floor.context.{level}")
        value = floor.extra.get("one_way_mbps") if floor is not None else None
        return float(value) if value else None

    def _two_process_ratios(self, result: Result) -> None:
        """Ratios of a two-process scenario: to the one-way floor, to plain asyncio in two processes, to the best
        one end can do when it pays its own crypto and its own socket work on one thread."""
        assert result.value is not None
        kind = result.kind
        plain_kind = "2proc-pingpong" if kind == "2proc-pingpong" else "2proc-send"
        plain = self._value(f"baseline.asyncio-protocol.{plain_kind}")
        if kind == "2proc-pingpong":
            small = self.get("floor.context.sealed-64B")
            if plain and result.group != "baseline":
                result.ratios["plain"] = round(result.value / plain, 3)
                if small is not None and small.value and result.level == "sealed":
                    # The four messages' crypto runs one after the other in a round trip, whichever end does it.
                    result.ratios["io_ceiling"] = round(result.value * (1.0 / plain + 2.0 / small.value), 3)
            return
        one_way = self.one_way_floor(result.level)
        if not one_way:
            return
        result.ratios["one_way_floor"] = round(result.value / one_way, 3)
        if plain:
            result.ratios["plain"] = round(result.value / plain, 3)
            result.ratios["io_ceiling"] = round(result.value * (1.0 / one_way + 1.0 / plain), 3)

    # -- renderings ------------------------------------------------------------------------------------------

    def rows(self) -> list[list[str]]:
        """The table rows: scenario, level, value, unit, ratios, verified, notes."""
        rows = []
        for result in self.results:
            value = f"{result.value:,.1f}" if result.ok and result.value is not None else "-"
            ratios = " ".join(f"{k}={v:.2f}" for k, v in result.ratios.items())
            notes = result.status if not result.ok else _notes(result)
            verified = {True: "yes", False: "NO", None: "-"}[result.verified]
            rows.append([result.name, result.level, value, result.unit, ratios, verified, notes])
        return rows

    def table(self, markdown: bool = False) -> str:
        """The results as an aligned text table (or a Markdown table), followed by the targets."""
        header = ["scenario", "level", "value", "unit", "ratios", "verified", "notes"]
        rows = self.rows()
        lines: list[str] = []
        if markdown:
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines.extend("| " + " | ".join(row) + " |" for row in rows)
        else:
            widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
            fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
            lines.append(fmt.format(*header).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            lines.extend(fmt.format(*row).rstrip() for row in rows)
        sections = (
            ("targets:", "target", [t for t in self.targets if not t.tracked]),
            (
                "also tracked (guards of issue 7 that issue 15 kept):",
                "tracked guard",
                [t for t in self.targets if t.tracked],
            ),
        )
        for title, column, targets in sections:
            lines.append("")
            lines.append(title if not markdown else f"| {column} | wanted | measured | met |")
            if markdown:
                lines.append("|---|---|---|---|")
            for target in targets:
                met = {True: "yes", False: "MISSED", None: "-"}[target.met]
                if markdown:
                    lines.append(f"| {target.name} | {target.wanted} | {target.measured} | {met} |")
                else:
                    lines.append(f"  [{met:>6}] {target.name}: {target.measured} (want {target.wanted})")
        ceilings = {level: self.io_ceiling(level) for level in ("sealed", "sign")}
        if any(ceilings.values()):
            lines.append("")
            lines.append(
                "io_ceiling = 1/(1/floor + 1/plain bulk of the same API), the best one thread can do with both ends' "
                "crypto and socket work; with asyncio Protocols: "
                + ", ".join(f"{level} {value:,.1f} MB/s" for level, value in ceilings.items() if value)
            )
        info = self.machine
        lines.append("")
        lines.append(
            f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
            f"load at start {info['loadavg_at_start']}; run took {self.seconds:.1f} s; MB = 10^6 bytes"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready values."""
        return {
            "machine": self.machine,
            "config": self.config.to_json(),
            "seconds": round(self.seconds, 2),
            "io_ceiling_mbps": {level: self.io_ceiling(level) for level in ("sealed", "sign")},
            "results": [result.to_json() for result in self.results],
            "targets": [target.__dict__ for target in self.targets],
        }

    def write_json(self, path: str) -> None:
        """Write :meth:`to_json` to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, indent=2)
            handle.write("\n")

    def plot(self, path: str) -> bool:
        """Write a PNG bar chart of the bulk MB/s figures; False (nothing written) without matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        bars = [
            r
            for r in self.results
            if r.ok and r.unit == "MB/s" and r.kind in ("bulk", "crypto", "2proc-send", "2proc-receive")
        ]
        colours = {
            "floor": "#888888",
            "baseline": "#4c72b0",
            "reference": "#8172b2",
            "ours": "#dd8452",
            "alternative": "#55a868",
        }
        figure, axis = plt.subplots(figsize=(10, 0.32 * len(bars) + 1.5))
        names = [r.name for r in bars]
        axis.barh(names, [r.value or 0.0 for r in bars], color=[colours.get(r.group, "#333333") for r in bars])
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_xlabel("MB/s (log scale; one direction; both ends in one process, except *.2proc-*: one per process)")
        info = self.machine
        axis.set_title(f"negotiate-stream bench: {info['nproc']} cores, {info['cpu']}, Python {info['python']}")
        for index, result in enumerate(bars):
            axis.text(result.value or 0.0, index, f" {result.value:,.0f}", va="center", fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return True


#: The notes column: for each figure a scenario may report (its ``extra`` key), in this order, the note that shows
#: it, filled from ``extra`` (with the defaults and the sample count that :func:`_notes` adds).
_NOTES = {
    "protect_mbps": "protect {protect_mbps:,.0f} / unprotect {unprotect_mbps:,.0f} MB/s",
    "us_per_message": "{us_per_message:.1f} us per {message_bytes:,} B message",
    "gssapi_us_per_message": "pyspnego {pyspnego_us_per_message:.1f} us, gssapi.raw {gssapi_us_per_message:.1f} us, "
    "gssapi methods {gssapi_highlevel_us_per_message:.1f} us",
    "record_path": "record path: {record_path}",
    "us_per_round_trip": "{us_per_round_trip:.1f} us per round trip",
    "ms_per_handshake": "{ms_per_handshake:.2f} ms each",
    "rss_kib_per_connection": "{connections} conns, RSS/conn {rss_kib_per_connection:.1f} KiB streaming, "
    "{rss_kib_per_idle_connection:.1f} KiB idle",
    "rss_spread_mib": "RSS spread {rss_spread_mib:.2f} MiB over {rss_sample_count} samples",
    "cpu_share_here": "CPU: this end {cpu_share_here:.2f}, peer process {cpu_share_peer:.2f}",
    "note": "{note}",
    "paired_ratios": "{paired_keys} measured interleaved with the baseline",
}


def _notes(result: Result) -> str:
    extra = result.extra
    values = {
        "message_bytes": 64,
        "rss_kib_per_idle_connection": 0.0,
        **extra,
        "rss_sample_count": len(extra.get("rss_samples_mib", [])),
        "paired_keys": ", ".join(extra.get("paired_ratios", {})),
    }
    return "; ".join(note.format_map(values) for key, note in _NOTES.items() if key in extra)
