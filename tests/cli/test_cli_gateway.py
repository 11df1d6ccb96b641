"""``serve`` as an identity-aware gateway: ``--allow``, ``--proxy-protocol v2`` and the audit line of each connection.

The codec and matching rules are checked as pure functions (exact PROXY v2 bytes, a table of identities); the
gateway end to end through real subprocesses, with a service that parses the PROXY header with its own minimal
parser (below), independent of the encoder under test.
"""

from __future__ import annotations

import asyncio
import pickle
import re
import socket

import pytest

from negotiate_stream.cli._allow import AccessDeniedError, AllowList, IdentityPattern, split_identity
from negotiate_stream.cli._errors import CLIUsageError, exit_code_for
from negotiate_stream.cli._proxy_protocol import encode_v2, gateway_header
from negotiate_stream.errors import SEC_E_LOGON_DENIED, HandshakeError
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import run
from tests.support.cli import USER, authenticated_client, gateway, run_connect, serve

_SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")

# -- PROXY protocol v2 encoder -------------------------------------------------------------------------------------


def test_proxy_v2_ipv4_exact_bytes() -> None:
    """An IPv4 connection with both TLVs encodes byte for byte as the HAProxy specification lays it out."""
    header = encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 9000), [(0xE0, b"EX\\alice"), (0xE1, b"ntlm")])
    assert header == bytes.fromhex(
        "0d0a0d0a000d0a515549540a"  # signature
        "21"  # version 2, command PROXY
        "11"  # TCP over IPv4
        "001e"  # 30 bytes follow: 12 of addresses and ports, 11 + 7 of TLVs
        "c0000201c6336407"  # 192.0.2.1, 198.51.100.7
        "dc042328"  # ports 56324, 9000
        "e0000845585c616c696365"  # 0xE0, 8 bytes: EX\alice
        "e100046e746c6d"  # 0xE1, 4 bytes: ntlm
    )


def test_proxy_v2_ipv6_exact_bytes() -> None:
    """An IPv6 connection uses family 0x21 and 36 bytes of addresses and ports."""
    header = encode_v2(("2001:db8::1", 443), ("2001:db8::2", 9000))
    assert header == bytes.fromhex(
        "0d0a0d0a000d0a515549540a"  # signature
        "2121"  # version 2 PROXY, TCP over IPv6
        "0024"  # 36 bytes follow
        "20010db8000000000000000000000001"  # 2001:db8::1
        "20010db8000000000000000000000002"  # 2001:db8::2
        "01bb2328"  # ports 443, 9000
    )


def test_proxy_v2_mapped_and_mixed_addresses() -> None:
    """IPv4-mapped IPv6 addresses (a dual-stack listener) are sent as IPv4; a mixed pair as IPv6."""
    mapped = encode_v2(("::ffff:127.0.0.1", 5000), ("::ffff:10.0.0.1", 9000))
    assert mapped[13] == 0x11 and mapped[16:24] == bytes([127, 0, 0, 1, 10, 0, 0, 1])
    mixed = encode_v2(("127.0.0.1", 5000), ("::1", 9000))
    assert mixed[13] == 0x21
    assert mixed[16:32] == bytes(10) + b"\xff\xff\x7f\x00\x00\x01"


def test_proxy_v2_refuses_names_and_oversized_values() -> None:
    """A host name (not an IP literal) and a TLV longer than its 16-bit length are refused."""
    with pytest.raises(ValueError):
        encode_v2(("localhost", 1), ("127.0.0.1", 2))
    with pytest.raises(ValueError):
        encode_v2(("127.0.0.1", 1), ("127.0.0.1", 2), [(0xE0, bytes(0x10000))])


def test_gateway_header_leaves_out_unknown_tlvs() -> None:
    """The gateway's header carries the identity as UTF-8 and the protocol, each only when known."""
    header = gateway_header(("127.0.0.1", 1), ("127.0.0.1", 2), "EXAMPLE\\zoë", "kerberos")
    assert header.endswith(b"\xe0\x00\x0cEXAMPLE\\zo\xc3\xab\xe1\x00\x08kerberos")
    assert len(gateway_header(("127.0.0.1", 1), ("127.0.0.1", 2), None, None)) == 16 + 12


# -- --allow matching ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "identity", "protocol", "allowed"),
    [
        ("NEGOTIATE-TEST\\alice", "negotiate-test\\ALICE", "ntlm", True),  # case-insensitive, both parts
        ("NEGOTIATE-TEST\\alice", "NEGOTIATE-TEST\\bob", "ntlm", False),
        ("NEGOTIATE-TEST\\*", "NEGOTIATE-TEST\\bob", "ntlm", True),
        ("NEGOTIATE-TEST\\*", "OTHER\\bob", "ntlm", False),
        ("*@EXAMPLE.COM", "alice@example.com", "kerberos", True),
        ("*@EXAMPLE.COM", "host/app.example.com@EXAMPLE.COM", "kerberos", True),
        ("alice@EXAMPLE.COM", "bob@EXAMPLE.COM", "kerberos", False),
        ("EXAMPLE\\alice", "alice@EXAMPLE", "kerberos", True),  # one (user, domain) pair, two spellings
        ("EXAMPLE\\alice", "alice@EXAMPLE.COM", "kerberos", False),  # NetBIOS name is not the DNS realm
        ("*@EXAMPLE.COM", "EXAMPLE\\alice", "ntlm", False),
        ("*@GOOD", "alice@GOOD", "ntlm", True),  # NTLM user in UPN form, no domain field
        ("GOOD\\*", "EVIL\\alice@GOOD", "ntlm", False),  # the domain field decides, not an @ in the user name
        ("*@GOOD", "EVIL\\alice@GOOD", "ntlm", False),
        ("*@GOOD", "alice\\@EVIL@GOOD", "kerberos", True),  # escaped @ inside the user component
        ("*@GOOD", "alice@EVIL\\@GOOD", "kerberos", False),  # the realm follows the first unescaped @
        ("*\\*", "alice", "ntlm", True),  # no domain at all: only a * domain matches it
        ("NEGOTIATE-TEST\\alice", "alice", "ntlm", False),
    ],
)
def test_allow_matching(pattern: str, identity: str, protocol: str, allowed: bool) -> None:
    """Each pattern matches exactly the identities docs/cli.md says it does."""
    assert AllowList.parse([pattern]).permits(identity, protocol) is allowed


def test_allow_list_any_pattern_and_no_identity() -> None:
    """An identity passes if any pattern matches; a client without an identity never does."""
    allow = AllowList.parse(["OTHER\\*", "NEGOTIATE-TEST\\alice"])
    assert allow.permits(USER, "ntlm")
    assert not allow.permits(None, "ntlm")
    assert split_identity("host/app@EXAMPLE.COM", "kerberos") == ("host/app", "EXAMPLE.COM")


@pytest.mark.parametrize("text", ["alice", "", "\\alice", "alice@", "A\\B\\c", "a@b@C", "EX\\al*", "*x@R", "A\\b@C"])
def test_allow_pattern_usage_errors(text: str) -> None:
    """A pattern without exactly one user and one domain, or with * inside a part, is a usage error."""
    with pytest.raises(CLIUsageError, match="--allow"):
        IdentityPattern.parse(text)


def test_access_denied_error_is_an_authentication_failure() -> None:
    """The refusal carries SEC_E_LOGON_DENIED, maps to exit code 3 and survives pickling."""
    error = AccessDeniedError(USER, "ntlm", "sign")
    assert error.status == SEC_E_LOGON_DENIED
    assert exit_code_for(error) == 3
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.identity, copy.protocol, copy.protection, str(copy)) == (USER, "ntlm", "sign", str(error))


# -- end to end ----------------------------------------------------------------------------------------------------


async def _read_proxy_v2(reader: asyncio.StreamReader) -> tuple[tuple[str, int], tuple[str, int], dict[int, bytes]]:
    """A minimal PROXY v2 parser, written from the specification: (source, destination, TLVs by type)."""
    head = await reader.readexactly(16)
    assert head[:12] == _SIGNATURE
    assert head[12] == 0x21  # version 2, PROXY
    size, family = {0x11: (4, socket.AF_INET), 0x21: (16, socket.AF_INET6)}[head[13]]
    body = await reader.readexactly(int.from_bytes(head[14:16], "big"))
    ports = body[2 * size : 2 * size + 4]
    source = (socket.inet_ntop(family, body[:size]), int.from_bytes(ports[:2], "big"))
    destination = (socket.inet_ntop(family, body[size : 2 * size]), int.from_bytes(ports[2:], "big"))
    tlvs: dict[int, bytes] = {}
    pos = 2 * size + 4
    while pos < len(body):
        length = int.from_bytes(body[pos + 1 : pos + 3], "big")
        tlvs[body[pos]] = body[pos + 3 : pos + 3 + length]
        pos += 3 + length
    assert pos == len(body)
    return source, destination, tlvs


def test_proxy_header_reaches_the_service_before_the_data(ntlm_users: NTLMUsers) -> None:
    """With ``--proxy-protocol v2`` the service reads the client's address, identity and protocol first, then
    exactly the client's data; the connection's audit line says who, how, how much and how it ended."""
    message = b"hello through the gateway"
    parsed: list[tuple[tuple[str, int], tuple[str, int], dict[int, bytes], bytes]] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source, destination, tlvs = await _read_proxy_v2(reader)
        data = await reader.read()  # until the forwarded half-close
        parsed.append((source, destination, tlvs, data))
        writer.write(data.upper())
        writer.close()

    async def scenario() -> tuple[bytes, tuple[str, int], list[dict[str, object]], int]:
        backend = await asyncio.start_server(service, "127.0.0.1", 0)
        options = ["--forward", f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", "--proxy-protocol", "v2"]
        try:
            async with gateway(ntlm_users, *options, "--allow", "negotiate-test\\ALICE") as running:
                peer = await authenticated_client(running.port, ntlm_users)
                client_address = peer.writer.get_extra_info("sockname")
                peer.writer.write(peer.connection.send(message))
                peer.writer.write_eof()
                answer = await peer.receive(len(message) + 1)  # until the gateway's clean EOF
                peer.writer.close()
        finally:
            backend.close()
            await backend.wait_closed()
        assert running.returncode == 0
        return answer, client_address, running.events, running.port

    answer, client_address, events, port = run(scenario())
    assert answer == message.upper()
    assert parsed == [(client_address, ("127.0.0.1", port), {0xE0: USER.encode(), 0xE1: b"ntlm"}, message)]
    assert events[0]["proxy_protocol"] == "v2" and events[0]["allow"] == ["negotiate-test\\ALICE"]
    assert [e["event"] for e in events] == ["listening", "handshake", "closed", "stopped"]
    audit = events[2]
    assert {k: audit[k] for k in ("identity", "peer", "protocol", "protection", "bytes_up", "bytes_down")} == {
        "identity": USER,
        "peer": f"127.0.0.1:{client_address[1]}",
        "protocol": "ntlm",
        "protection": "encrypt_and_sign",
        "bytes_up": len(message),
        "bytes_down": len(message),
    }
    assert audit["outcome"] == "ok"
    assert isinstance(audit["duration_ms"], float) and audit["duration_ms"] >= 0


def test_refused_identity_never_reaches_the_service(ntlm_users: NTLMUsers) -> None:
    """An authenticated client no ``--allow`` matches is refused: ``connect`` exits 3 naming SEC_E_LOGON_DENIED,
    the gateway logs a ``refused`` audit line with the identity, and the service is never contacted."""
    contacted: list[int] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        contacted.append(1)
        writer.close()

    async def scenario() -> tuple[int, str, list[dict[str, object]]]:
        backend = await asyncio.start_server(service, "127.0.0.1", 0)
        options = ["--forward", f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", "--proxy-protocol", "v2"]
        try:
            async with gateway(
                ntlm_users, *options, "--allow", "OTHER\\*", "--allow", "*@NEGOTIATE-TEST.EXAMPLE"
            ) as running:
                result = await asyncio.to_thread(
                    run_connect, running.port, stdin=b"never sent", password=ntlm_users.password(USER)
                )
        finally:
            backend.close()
            await backend.wait_closed()
        assert running.returncode == 0
        return result.returncode, result.stderr.decode(), running.events

    returncode, stderr, events = run(scenario())
    assert returncode == 3
    assert stderr.startswith("negotiate-stream connect: authentication failed") and "SEC_E_LOGON_DENIED" in stderr
    assert contacted == []
    assert [e["event"] for e in events] == ["listening", "refused", "stopped"]
    refused = events[1]
    assert (refused["identity"], refused["protocol"], refused["outcome"]) == (USER, "ntlm", "refused")
    assert refused["bytes_up"] == refused["bytes_down"] == 0


def test_refusal_is_an_error_frame_in_place_of_handshake_done(ntlm_users: NTLMUsers) -> None:
    """The refused client reads an Error frame (SEC_E_LOGON_DENIED) where HandshakeDone would come: its
    handshake fails, it never holds a session that is then cut off."""
    with serve(ntlm_users, "--echo", "--allow", "OTHER\\alice") as server:
        with pytest.raises(HandshakeError) as refused:
            run(authenticated_client(server.port, ntlm_users))
        assert server.stop() == 0, server.stderr
    assert refused.value.error_code == SEC_E_LOGON_DENIED
    assert [e["event"] for e in server.events] == ["listening", "refused", "stopped"]


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed", "refused"])
def test_text_audit_line(ntlm_users: NTLMUsers, allowed: bool) -> None:
    """Without ``--json`` each connection's last line ends with the audit record in words."""
    pattern = "NEGOTIATE-TEST\\*" if allowed else "OTHER\\*"
    with serve(ntlm_users, "--echo", "--allow", pattern, json_output=False) as server:
        run_connect(server.port, stdin=b"hello", password=ntlm_users.password(USER))
        assert server.stop() == 0, server.stderr
    if allowed:
        expected = r"closed after 5 bytes received, 5 sent \[ok: NEGOTIATE-TEST\\alice, ntlm, encrypt_and_sign, "
        expected += r"5 B up, 5 B down, [\d.]+ ms\]$"
    else:
        expected = r"refused NEGOTIATE-TEST\\alice: no --allow matches; sent SEC_E_LOGON_DENIED "
        expected += r"\[refused: NEGOTIATE-TEST\\alice, ntlm, encrypt_and_sign, 0 B up, 0 B down, [\d.]+ ms\]$"
    assert re.search(expected, server.stderr, flags=re.MULTILINE), server.stderr


def test_audit_line_of_a_failed_handshake(ntlm_users: NTLMUsers) -> None:
    """A rejected password ends its connection with a ``handshake_failed`` audit line: no identity, nothing relayed."""
    with serve(ntlm_users) as server:
        run_connect(server.port, stdin=b"never sent", password="wrong password")
        assert server.stop() == 0, server.stderr
    failed = [e for e in server.events if e["event"] == "handshake_failed"]
    assert len(failed) == 1, server.events
    assert (failed[0]["outcome"], failed[0]["identity"], failed[0]["protocol"]) == ("handshake_failed", None, None)
    assert failed[0]["bytes_up"] == failed[0]["bytes_down"] == 0


def test_audit_lines_of_rejected_and_stopped_connections(ntlm_users: NTLMUsers) -> None:
    """A client over ``--max-connections`` gets a ``rejected`` audit line, and one still open when the server stops
    gets a ``closed`` one with outcome ``stopped`` and what it carried."""
    with serve(ntlm_users, "--echo", "--max-connections", "1") as server:

        async def held_during_shutdown() -> None:
            held = await authenticated_client(server.port, ntlm_users)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await reader.read() == b""  # closed at once: the one allowed client is connected
            writer.close()
            held.writer.write(held.connection.send(b"x"))
            assert await held.receive(1) == b"x"
            assert await asyncio.to_thread(server.stop) == 0, server.stderr  # while `held` is still open
            held.writer.close()

        run(held_during_shutdown())
    audits = {str(e["event"]): e for e in server.events if "outcome" in e}
    assert sorted(audits) == ["closed", "rejected"], server.events
    assert (audits["rejected"]["outcome"], audits["rejected"]["identity"]) == ("rejected", None)
    closed = audits["closed"]
    assert (closed["outcome"], closed["identity"], closed["bytes_up"], closed["bytes_down"]) == ("stopped", USER, 1, 1)
