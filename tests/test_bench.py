"""The benchmark (benchmarks/, run by ``scripts/run bench``) runs end to end in its smallest mode and produces a
sane table, JSON and plot (no timing asserted)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pathlib
import shutil

import pytest

import negotiate_stream
from benchmarks import BenchConfig, all_scenarios, kerberos, paths, run_bench
from benchmarks.__main__ import main
from benchmarks.config import KIB, WRITE_SIZE
from benchmarks.paths import FAST_PATH_VARIABLE, PYSPNEGO_SUFFIX, record_path_env
from benchmarks.registry import Unavailable, matches, select
from benchmarks.verify import StreamVerifier

TINY = BenchConfig.create(quick=True, scale=0.01)


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


@pytest.fixture(scope="module")
def report():
    """One run of every scenario at ``--quick --scale 0.01``, with its progress lines kept."""
    progress = io.StringIO()
    result = run_bench(TINY, progress_stream=progress)
    result.progress_text = progress.getvalue()  # type: ignore[attr-defined]
    return result


def test_every_scenario_is_reported_once(report):
    """Every scenario runs once, in the order of all_scenarios(), and appears in the table."""
    names = [r.name for r in report.results]
    assert names == [s.name for s in all_scenarios()]
    assert len(set(names)) == len(names)
    table = report.table()
    for name in names:
        assert name in table


def test_measured_numbers_are_positive_and_data_verified(report):
    """No scenario errors; every measured one has a positive value and verified data."""
    for result in report.results:
        assert not result.status.startswith("error"), (result.name, result.status)
        if result.ok:
            assert result.value > 0, result.name
            assert result.verified is True, result.name
            if result.kind in ("bulk", "crypto", "concurrent", "growth", "2proc-send", "2proc-receive"):
                assert result.nbytes > 0, result.name


def test_nothing_of_ours_or_the_baselines_is_skipped_when_its_module_exists(report):
    """Floors, baselines and our adapters are never skipped when their module imports; jetblack only when absent."""
    modules = {
        "asyncio-protocol": "negotiate_stream.asyncio_",
        "asyncio-streams": "negotiate_stream.asyncio_",
        "anyio-asyncio": "negotiate_stream.anyio_",
        "anyio-trio": "negotiate_stream.anyio_",
        "sync": "negotiate_stream.sync",
    }
    for result in report.results:
        if result.kind == "crypto-kerberos":  # needs the MIT realm: see test_kerberos_cost_is_measured_or_skipped
            assert result.ok or result.status.startswith("skipped"), (result.name, result.status)
        elif result.group in ("floor", "baseline", "reference"):
            assert result.ok, (result.name, result.status)
        elif result.group == "ours":
            api = result.name.split(".")[1]
            if api in modules and _available(modules[api]):
                assert result.ok, (result.name, result.status)
            else:
                assert result.ok or result.status.startswith("skipped"), (result.name, result.status)
        elif not _available("jetblack_negotiate_stream"):
            assert result.status.startswith("skipped"), (result.name, result.status)


def test_ratios_and_targets_are_computed(report):
    """Floor, primitives, plain and step-loop ratios are filled in, and the targets are judged."""
    floor = report.get("floor.context.sealed")
    assert floor is not None
    assert floor.extra["protect_mbps"] > 0
    assert floor.extra["unprotect_mbps"] > 0
    assert report.get("floor.primitives.sealed") is not None
    assert report.get("floor.primitives.sign") is not None
    in_memory = report.get("ours.connection-in-memory.handshake")
    assert in_memory is not None and in_memory.ratios["cost_vs_step_loop"] > 0
    for result in report.results:
        if result.ok and result.group == "ours" and result.kind == "bulk" and result.level != "none":
            assert result.ratios["floor"] > 0, result.name
            if result.name.split(".")[1] != "connection-in-memory":
                assert result.ratios["plain"] > 0, result.name
    names = [t.name for t in report.targets]
    assert any("crypto floor" in n for n in names)
    assert any("flat memory" in n for n in names)
    assert "targets:" in report.table()


def test_two_process_scenarios_use_the_one_way_floor_and_report_both_cpus(report):
    """Two-process scenarios are verified, judged against the one-way floor and report both CPU shares."""
    floor = report.get("floor.context.sealed")
    one_way = floor.extra["one_way_mbps"]
    assert floor.value < one_way <= max(floor.extra["protect_mbps"], floor.extra["unprotect_mbps"])
    assert floor.extra["records_per_write"] == [0xFC00, WRITE_SIZE - 0xFC00]
    split = [r for r in report.results if r.kind.startswith("2proc-")]
    assert {r.kind for r in split} == {"2proc-send", "2proc-receive", "2proc-pingpong"}
    for result in split:
        assert result.ok, (result.name, result.status)
        assert result.verified is True, result.name
        assert result.extra["cpu_share_here"] >= 0 and result.extra["cpu_share_peer"] >= 0, result.name
        if result.group == "ours" and result.kind != "2proc-pingpong":
            level_floor = report.get(f"floor.context.{result.level}").extra["one_way_mbps"]
            assert result.ratios["one_way_floor"] == pytest.approx(result.value / level_floor, rel=1e-2)
            assert result.ratios["plain"] > 0, result.name
        if result.group == "ours" and result.kind == "2proc-pingpong":
            assert result.ratios["plain"] > 0, result.name
    names = [t.name for t in report.targets]
    assert any("two processes, vs one-way crypto floor" in n for n in names)
    assert any("without TCP connect" in n for n in names)


def test_json_round_trips_and_progress_was_written(report, tmp_path):
    """The JSON file holds the machine, config and every result; progress went to the given stream."""
    path = tmp_path / "bench.json"
    report.write_json(str(path))
    data = json.loads(path.read_text())
    assert data["machine"]["nproc"] == os.cpu_count()
    assert {r["name"] for r in data["results"]} == {r.name for r in report.results}
    assert data["config"]["quick"] is True
    assert "floor.context.sealed" in report.progress_text
    assert report.progress_text.count("\n") >= len(report.results)


def test_memory_scenarios_report_rss(report):
    """The concurrency and growth scenarios report their RSS figures."""
    for result in report.results:
        if result.ok and result.kind == "concurrent":
            assert result.extra["connections"] == TINY.concurrent[result.name.endswith("large")]
            assert "rss_kib_per_connection" in result.extra
        if result.ok and result.kind == "growth":
            assert result.extra["rss_samples_mib"], result.name


def test_cli_writes_json_and_plot(tmp_path, capsys):
    """``scripts/run bench --quick --scale 0.01 --only floor --json F --plot F --markdown`` writes both files."""
    out = tmp_path / "floor.json"
    plot = tmp_path / "floor.png"
    argv = ["--quick", "--scale", "0.01", "--only", "floor", "--json", str(out), "--plot", str(plot)]
    assert main([*argv, "--markdown", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "| floor.context.sealed |" in printed.out
    assert {r["name"] for r in json.loads(out.read_text())["results"]} == {
        s.name for s in select(all_scenarios(), ["floor"])
    }
    if _available("matplotlib"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in printed.err


def test_unknown_selection_is_an_error(capsys):
    """An --only that matches nothing exits 2 with a message."""
    argv = ["--quick", "--scale", "0.01", "--only", "no-such-scenario", "--no-progress", "--no-isolate"]
    assert main(argv) == 2
    assert "no scenario matches" in capsys.readouterr().err


def test_list_and_profile(capsys):
    """--list prints every selected name; --profile adds cProfile's table after the results."""
    assert main(["--list", "--only", "2proc"]) == 0
    listed = capsys.readouterr().out.split()
    assert "ours.sync.2proc-send.sealed" in listed
    assert "floor.context.sealed" not in listed
    assert main(["--quick", "--scale", "0.01", "--only", "floor.context.sealed", "--no-progress", "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "floor.context.sealed" in printed
    assert "function calls" in printed and "tottime" in printed


def test_harness_is_not_in_the_package():
    """The harness lives in benchmarks/ only: the wheel's negotiate_stream has no bench module."""
    package = pathlib.Path(negotiate_stream.__file__).parent
    assert not (package / "_bench").exists()
    assert not (package / "cli" / "bench.py").exists()


@pytest.mark.parametrize(
    ("selector", "name", "expected"),
    [
        ("floor", "floor.context.sealed", True),
        ("sealed", "ours.sync.bulk.sealed", True),
        ("anyio", "ours.anyio-trio.bulk.sealed", True),
        ("asyncio", "ours.anyio-asyncio.bulk.sealed", False),
        ("ours.sync", "ours.sync.pingpong.none", True),
        ("*tls*", "baseline.tls-streams.bulk", True),
        ("sync", "baseline.asyncio-streams.bulk", False),
        ("2proc", "ours.sync.2proc-send.sealed", True),
        ("2proc-receive", "ours.sync.2proc-send.sealed", False),
    ],
)
def test_selectors(selector, name, expected):
    """--only selectors: full names, prefixes, components, first words and globs."""
    assert matches(name, selector) is expected


def test_verifier_detects_corruption_loss_and_duplication():
    """The StreamVerifier fails on a flipped bit, a missing byte and a shifted stream."""
    block = bytes(range(256)) * (WRITE_SIZE // 256)
    total = 8 * WRITE_SIZE

    def feed(stream: bytes) -> StreamVerifier:
        verifier = StreamVerifier(block, total, sample_every=WRITE_SIZE, window=4 * KIB)
        for start in range(0, len(stream), 1000):  # chunks that straddle the windows
            verifier.feed(stream[start : start + 1000])
        return verifier

    good = block * 8
    assert feed(good).ok
    corrupted = bytearray(good)
    corrupted[3 * WRITE_SIZE + 100] ^= 1
    assert not feed(bytes(corrupted)).ok
    assert not feed(good[:-1]).ok
    shifted = good[:WRITE_SIZE] + good[WRITE_SIZE + 16 :] + good[:16]  # 16 bytes lost, total kept
    assert not feed(shifted).ok


def test_config_scales_and_rejects_nonsense():
    """BenchConfig sizes: full size as documented, scaled to whole writes, scale 0 rejected."""
    full = BenchConfig.create()
    assert full.bulk_bytes == 256 * 1024 * 1024
    assert full.concurrent == (100, 1_000)
    assert full.growth_bytes == 1024 * 1024 * 1024
    assert TINY.bulk_bytes % WRITE_SIZE == 0 and TINY.bulk_bytes >= WRITE_SIZE
    with pytest.raises(ValueError):
        BenchConfig.create(scale=0)


# -- issue 15: primitives per 64 B message, TLS ping-pong over Protocols, both NTLM record paths, Kerberos cost ----

#: The pyspnego-path twins measured in the same run as their fast-path scenario (the name without the suffix).
PATH_TWINS = [
    "floor.context.sealed",
    "floor.context.sign",
    "floor.context.sealed-64B",
    "ours.asyncio-protocol.bulk.sealed",
    "ours.asyncio-protocol.bulk.sign",
    "ours.asyncio-protocol.pingpong.sealed",
]
#: The targets of issue 15, exactly (the part of each target's name before the scenario).
ISSUE_15_TARGETS = {
    "64 B protect + unprotect through our context vs the raw-primitive rate",
    "asyncio Protocol sealed ping-pong vs plain Protocol ping-pong",
    "asyncio streams sealed ping-pong vs TLS streams ping-pong",
    "asyncio Protocol bulk sealed, one process, vs primitives floor",
    "asyncio Protocol bulk sealed, two processes, vs one-way crypto floor",
    "sign-only (asyncio Protocol bulk) vs HMAC floor",
    "streaming RSS per endpoint",
}


def _kerberos_available() -> bool:
    kdc = shutil.which("krb5kdc") is not None or pathlib.Path("/usr/sbin/krb5kdc").exists()
    return kdc and _available("gssapi")


def test_new_scenarios_are_listed_side_by_side():
    """The issue 15 scenarios exist, and every pyspnego-path twin comes right after its fast-path scenario."""
    names = [s.name for s in all_scenarios()]
    for name in ("floor.primitives.sealed-64B", "baseline.tls-protocol.pingpong", "baseline.tls-protocol.bulk"):
        assert name in names
    assert [n for n in names if n.startswith("floor.kerberos.")] == [
        "floor.kerberos.sealed-64B",
        "floor.kerberos.sealed-0xFC00",
    ]
    assert sorted(n.removesuffix(PYSPNEGO_SUFFIX) for n in names if n.endswith(PYSPNEGO_SUFFIX)) == sorted(PATH_TWINS)
    for fast in PATH_TWINS:
        assert names[names.index(fast) + 1] == fast + PYSPNEGO_SUFFIX
    assert main(["--list", "--only", "pyspnego"]) == 0  # a component's first word selects the twins


def test_both_record_paths_are_measured_and_checked(report):
    """Each twin ran on the path its name claims (checked on the contexts), was verified, and is compared with its
    fast twin; a pyspnego-path scenario's floor ratio uses the floor of the same path."""
    for fast_name in PATH_TWINS:
        fast, slow = report.get(fast_name), report.get(fast_name + PYSPNEGO_SUFFIX)
        assert fast is not None and slow is not None, fast_name
        assert fast.extra["record_path"] == "fast", fast_name
        assert slow.extra["record_path"] == "pyspnego", fast_name
        assert fast.verified is True and slow.verified is True, fast_name
        assert fast.ratios["vs_pyspnego_path"] == pytest.approx(fast.value / slow.value, rel=1e-2)
    for level in ("sealed", "sign"):
        slow = report.get(f"ours.asyncio-protocol.bulk.{level}{PYSPNEGO_SUFFIX}")
        floor = report.get(f"floor.context.{level}{PYSPNEGO_SUFFIX}")
        assert slow.ratios["floor"] == pytest.approx(slow.value / floor.value, rel=1e-2)
    assert report.get("ours.asyncio-protocol.bulk.none").extra["record_path"] == "none"


def test_primitives_per_message_and_tls_ratios(report):
    """floor.context.sealed-64B is judged against floor.primitives.sealed-64B; our asyncio APIs against TLS over
    the same API (streams and Protocols, ping-pong and bulk)."""
    small, raw = report.get("floor.context.sealed-64B"), report.get("floor.primitives.sealed-64B")
    assert raw.unit == "messages/s" and raw.extra["us_per_message"] > 0
    assert small.ratios["primitives"] == pytest.approx(small.value / raw.value, rel=1e-2)
    for api, tls_api in (("asyncio-streams", "tls-streams"), ("asyncio-protocol", "tls-protocol")):
        for kind in ("pingpong", "bulk"):
            ours, tls = report.get(f"ours.{api}.{kind}.sealed"), report.get(f"baseline.{tls_api}.{kind}")
            assert tls is not None and tls.verified is True, tls_api
            # A ratio measured interleaved with its baseline (runner.PAIRED) replaces the one of separate runs.
            expected = ours.extra.get("paired_ratios", {}).get("tls", ours.value / tls.value)
            assert ours.ratios["tls"] == pytest.approx(expected, rel=1e-2)


def test_target_ratios_are_measured_interleaved_with_their_baselines(report):
    """Each target scenario of runner.PAIRED carries the ratio of its interleaved window, used as its ratio."""
    from benchmarks.runner import PAIRED

    for name, pairs in PAIRED.items():
        result = report.get(name)
        assert result is not None and result.extra["runs"] == TINY.repeats, name
        for key, _baseline in pairs:
            paired = result.extra["paired_ratios"][key]
            assert paired > 0 and result.ratios[key] == paired, (name, key)


def test_targets_are_exactly_those_of_issue_15(report):
    """The targets are issue 15's list, each judged met or missed in a full tiny run; the guards kept from issue 7
    are reported apart."""
    current = [t for t in report.targets if not t.tracked]
    assert {t.name.split(":")[0] for t in current} == ISSUE_15_TARGETS
    for target in current:
        assert target.met in (True, False), target
    tracked = " ".join(t.name for t in report.targets if t.tracked)
    assert "handshake cost" in tracked and "flat memory" in tracked
    table = report.table()
    assert table.index("targets:") < table.index("also tracked")


def test_kerberos_cost_is_measured_or_skipped(report):
    """With the MIT KDC and python-gssapi the Kerberos scenarios compare our context with python-gssapi's own
    wrap/unwrap on the same contexts; without them they are skipped with the reason."""
    for name in ("floor.kerberos.sealed-64B", "floor.kerberos.sealed-0xFC00"):
        result = next(r for r in report.results if r.name == name)
        if not _kerberos_available():
            assert result.status.startswith("skipped:"), result.status
            continue
        assert result.ok, result.status
        assert result.verified is True and result.extra["record_path"] == "pyspnego"
        for layer in ("pyspnego", "gssapi", "gssapi_highlevel"):
            assert result.extra[f"{layer}_us_per_message"] > 0, layer
        assert result.ratios["cost_vs_gssapi"] > 0 and result.ratios["pyspnego_vs_gssapi"] > 0
    # The realm's variables were set for the Kerberos scenarios only, and its directory is gone.
    leftovers = [value for value in os.environ.values() if "bench-krb5-" in value]
    assert not leftovers, leftovers


@pytest.mark.parametrize("missing", ["kdc", "gssapi"])
def test_kerberos_is_skipped_with_a_reason(monkeypatch, missing):
    """No KDC or no python-gssapi: both Kerberos scenarios are skipped, naming what is missing (no realm starts)."""
    if missing == "kdc":
        # gssapi counts as present (even on a machine without it), so the missing KDC is what is reported.
        monkeypatch.setattr(kerberos, "require", lambda module: object())
        monkeypatch.setattr(kerberos, "_kdc_installed", lambda: False)
        reason = "KDC"
    else:

        def require(module: str) -> object:
            raise Unavailable(f"{module} is not importable (simulated)")

        monkeypatch.setattr(kerberos, "require", require)
        reason = "python-gssapi is not installed"
    result = run_bench(TINY, only=["floor.kerberos"], progress=False)
    assert [r.name for r in result.results] == ["floor.kerberos.sealed-64B", "floor.kerberos.sealed-0xFC00"]
    for item in result.results:
        assert item.status.startswith("skipped:") and reason in item.status, item.status


def test_a_scenario_on_the_wrong_record_path_fails(monkeypatch):
    """If the fast-path setting selected pyspnego, the fast scenarios fail instead of reporting pyspnego's figure."""
    monkeypatch.setitem(paths.PATH_SETTINGS, "fast", "0")
    names = ["floor.context.sealed-64B", "ours.asyncio-protocol.pingpong.sealed"]
    result = run_bench(TINY, only=names, progress=False)  # a dotted prefix: each with its pyspnego twin
    assert [r.name for r in result.results] == [n + twin for n in names for twin in ("", PYSPNEGO_SUFFIX)]
    for item in result.results:
        if item.name in names:
            assert item.status.startswith("error") and "wrong record path" in item.status, item.status
            assert item.value is None
        else:  # the twins claim pyspnego, and got it
            assert item.ok and item.extra["record_path"] == "pyspnego", item.status


def test_record_path_env_is_restored(monkeypatch):
    """The record-path switch is set only inside the block, then restored (set or unset) for the other scenarios."""
    monkeypatch.setenv(FAST_PATH_VARIABLE, "off")
    with record_path_env("fast"):
        assert os.environ[FAST_PATH_VARIABLE] == "1"
    assert os.environ[FAST_PATH_VARIABLE] == "off"
    monkeypatch.delenv(FAST_PATH_VARIABLE)
    with pytest.raises(RuntimeError), record_path_env("pyspnego"):
        assert os.environ[FAST_PATH_VARIABLE] == "0"
        raise RuntimeError("a failing scenario")
    assert FAST_PATH_VARIABLE not in os.environ


def test_bulk_and_floor_scenarios_report_their_best_run_and_never_hide_a_failure(monkeypatch):
    """A bulk scenario runs ``repeats`` times and reports its fastest run; a failed run is reported, not retried."""
    from benchmarks import runner
    from benchmarks.registry import Scenario
    from benchmarks.results import Result

    def scripted(name: str, outcomes: list[float | None]) -> Scenario:
        remaining = list(outcomes)

        def run(_ctx: object) -> Result:
            value = remaining.pop(0)
            status = "ok" if value is not None else "error: the data did not arrive"
            return Result(name, "ours", "bulk", value, level="sealed", verified=value is not None, status=status)

        return Scenario(name, "ours", "bulk", "sealed", run)

    scenarios = [scripted("ours.fake.bulk.best", [1.0, 3.0, 2.0]), scripted("ours.fake.bulk.fails", [5.0, None, 9.0])]
    monkeypatch.setattr(runner, "all_scenarios", lambda: scenarios)
    result = run_bench(TINY, only=["ours.fake"], progress=False)
    best, failed = result.results
    assert TINY.repeats == 3
    assert best.value == 3.0 and best.extra["runs"] == 3
    assert failed.value is None and failed.status.startswith("error"), failed.status
