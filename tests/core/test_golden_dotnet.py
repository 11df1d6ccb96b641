"""Golden wire bytes captured from real .NET Core 3.1 NegotiateStream peers (scripts/interop/captures).

The captures are byte streams between a .NET client and a .NET server; our codecs must decode every frame of
them exactly as .NET framed it: handshake message ids and sizes, the error code of a HandshakeError, record
lengths, and the handshake -> data transition.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from negotiate_stream._framing import nns
from negotiate_stream.errors import E_FAIL, ERROR_TRUST_FAILURE, FramingError

DATA = Path(__file__).parent.parent / "data"


def load(name: str) -> dict[str, bytes]:
    """Return the whole byte stream of each direction of a capture file."""
    streams: dict[str, bytearray] = {}
    direction = None
    for line in (DATA / f"{name}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            direction = line.strip("[]")
            streams[direction] = bytearray()
            continue
        assert direction is not None
        streams[direction] += bytes.fromhex(line)
    return {k: bytes(v) for k, v in streams.items()}


def split(stream: bytes, count: int = 99) -> tuple[list[nns.HandshakeFrame], bytes]:
    """Parse handshake frames until a Done or Error frame, or ``count`` frames (a SPNEGO client never sends
    Done: its context knows when it is complete, as our Connection does); return them and the bytes after."""
    frames: list[nns.HandshakeFrame] = []
    offset = 0
    while len(frames) < count and not (
        frames and frames[-1].message_id in (nns.MessageId.HANDSHAKE_DONE, nns.MessageId.HANDSHAKE_ERROR)
    ):
        parsed = nns.parse_handshake(stream, offset)
        assert parsed is not None, "the capture ends inside a handshake frame"
        frame, offset = parsed
        frames.append(frame)
    return frames, stream[offset:]


def records(data: bytes) -> list[bytes]:
    """Parse the data records of a capture's data phase (which must end at a record boundary)."""
    codec = nns.NNSRecordCodec()
    payloads: list[bytes] = []
    position = 0
    while (parsed := codec.parse(data, position)) is not None:
        payload, position = parsed
        payloads.append(payload)
    assert position == len(data), "the capture ends inside a record"
    return payloads


def test_ntlm_sealed_handshake_shape() -> None:
    """NTLM at EncryptAndSign: two InProgress from the client, InProgress + Done from the server, then one sealed
    21-byte record each way (signature version 1, sequence 1, no plaintext)."""
    streams = load("ntlm-encrypt-and-sign-hello")
    client_frames, client_rest = split(streams["client->server"], count=2)
    # SPNEGO: the .NET client never sends HandshakeDone; its two tokens are InProgress and data follows.
    assert [f.message_id for f in client_frames] == [nns.MessageId.HANDSHAKE_IN_PROGRESS] * 2
    assert [len(p) for p in records(client_rest)] == [21]
    server_frames, server_rest = split(streams["server->client"])
    assert [f.message_id for f in server_frames] == [
        nns.MessageId.HANDSHAKE_IN_PROGRESS,
        nns.MessageId.HANDSHAKE_DONE,
    ]
    assert len(server_frames[-1].payload) == 29  # final SPNEGO token: accept-completed + mechListMIC
    assert server_frames[0].payload.startswith(b"\xa1")  # NegTokenResp carrying the CHALLENGE
    assert b"NTLMSSP\x00\x02\x00\x00\x00" in server_frames[0].payload
    echoed = records(server_rest)
    assert [len(p) for p in echoed] == [21]  # 16-byte signature + 5 sealed bytes of 'hello'
    assert echoed[0][:4] == b"\x01\x00\x00\x00" and echoed[0][12:16] == b"\x01\x00\x00\x00"  # version 1, seq 1
    assert b"hello" not in echoed[0]


def test_ntlm_client_data_follows_two_inprogress_frames() -> None:
    """The client's data record starts right after its two InProgress messages (0x4A- and 0x13F-byte tokens)."""
    stream = load("ntlm-encrypt-and-sign-hello")["client->server"]
    handshake_end = 0x4A + 5 + 5 + 0x13F
    first, position = nns.parse_handshake(stream[:handshake_end]) or (None, 0)
    second, position = nns.parse_handshake(stream[:handshake_end], position) or (None, 0)
    assert first is not None and second is not None
    assert (first.message_id, second.message_id) == (nns.MessageId.HANDSHAKE_IN_PROGRESS,) * 2
    assert position == handshake_end
    payloads = records(stream[position:])
    assert [len(p) for p in payloads] == [21]


def test_ntlm_sign_only_from_dotnet_on_linux_is_sealed() -> None:
    """.NET Core on Linux (gss-ntlmssp) seals even at ProtectionLevel.Sign: the plaintext is not on the wire."""
    stream = load("ntlm-sign-hello")["client->server"]
    tail = stream[stream.index(bytes.fromhex("15000000")) :]
    (payload,) = records(tail)
    assert len(payload) == 21 and b"hello" not in payload


def test_ntlm_none_uses_raw_ntlmssp_and_client_done() -> None:
    """At ProtectionLevel.None .NET sends raw NTLMSSP tokens, the client ends with Done, and data is unframed."""
    streams = load("ntlm-none-hello")
    client_frames, client_rest = split(streams["client->server"])
    assert [f.message_id for f in client_frames] == [
        nns.MessageId.HANDSHAKE_IN_PROGRESS,
        nns.MessageId.HANDSHAKE_DONE,
    ]
    assert all(f.payload.startswith(b"NTLMSSP\x00") for f in client_frames)
    assert client_rest == b"hello"  # protection level none: raw bytes right after the handshake
    server_frames, server_rest = split(streams["server->client"])
    assert server_frames[-1] == nns.HandshakeFrame(nns.MessageId.HANDSHAKE_DONE, b"")
    assert nns.encode_handshake(nns.MessageId.HANDSHAKE_DONE) == bytes.fromhex("1401000000")
    assert server_rest == b"hello"


@pytest.mark.parametrize(
    ("capture", "code"),
    [("ntlm-wrong-password", E_FAIL), ("ntlm-protection-mismatch", ERROR_TRUST_FAILURE)],
)
def test_dotnet_error_frames_decode(capture: str, code: int) -> None:
    """.NET's HandshakeError frames decode to E_FAIL (bad password) or ERROR_TRUST_FAILURE, byte-identical to ours."""
    frames, _ = split(load(capture)["server->client"])
    error = frames[-1]
    assert error.message_id is nns.MessageId.HANDSHAKE_ERROR
    assert error.error_code == code
    # .NET Core 3.1 writes the code big-endian in the last 4 of 8 bytes; we write the same bytes.
    assert nns.encode_error(code) == nns.encode_handshake(nns.MessageId.HANDSHAKE_ERROR, error.payload)


def test_kerberos_handshake_shape() -> None:
    """Kerberos: one SPNEGO InProgress from the client, Done from the server, RFC 4121 wrap tokens as records."""
    streams = load("kerberos-encrypt-and-sign-hello")
    client_frames, client_rest = split(streams["client->server"], count=1)
    assert client_frames[0].message_id is nns.MessageId.HANDSHAKE_IN_PROGRESS
    assert [p[:2] for p in records(client_rest)] == [b"\x05\x04"]
    assert client_frames[0].payload.startswith(b"\x60")  # GSS-API InitialContextToken (SPNEGO)
    server_frames, server_rest = split(streams["server->client"])
    assert server_frames[-1].message_id is nns.MessageId.HANDSHAKE_DONE
    (payload,) = records(server_rest)
    assert payload[:2] == b"\x05\x04"  # RFC 4121 wrap token
    assert b"hello" not in payload


def test_dotnet_server_streams_never_trip_our_limits() -> None:
    """Every captured .NET server stream parses within our handshake and record limits."""
    for capture in DATA.glob("*.txt"):
        stream = load(capture.stem)["server->client"]
        try:
            frames, rest = split(stream)
            if frames[-1].message_id is nns.MessageId.HANDSHAKE_DONE and "none" not in capture.stem:
                records(rest)
        except FramingError as exc:  # pragma: no cover - a failure names the capture
            pytest.fail(f"{capture.name}: {exc}")
