"""The floors, measured without any I/O: what the crypto alone costs, and what a bare handshake costs.

* ``floor.context.*``: one established SecurityContext protects the records of 64 KiB writes, its peer
  unprotects them (sealed and sign-only); ``floor.context.sealed-64B``: the same for one 64-byte message. Each on
  the library's NTLM fast path, and again on pyspnego's record path (``*.pyspnego-path``), in the same run.
* ``floor.primitives.*``: the same work through ``cryptography`` and ``hmac`` only (no pyspnego, no library code):
  the records of 64 KiB writes (``sealed``, ``sign``) and one 64-byte message (``sealed-64B``).
* ``floor.handshake.step-loop``: two new SecurityContexts stepping each other's NTLM tokens in memory.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from negotiate_stream import ProtectionLevel, SecurityContext
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

from .config import PING_SIZE, RECORD_PLAINTEXT, WRITE_SIZE
from .paths import RecordPath, check_record_path, record_path_env, suffix_of
from .registry import LEVELS, Context, Scenario
from .results import Result, best_rate, handshake_result, mbps, measured_result

__all__ = [
    "RawNTLM",
    "crypto_floor",
    "established_contexts",
    "floor_scenarios",
    "handshake_step_loop",
    "primitives_floor",
    "small_primitives_floor",
    "small_record_floor",
    "step_to_completion",
]

#: Both NTLM record paths, the fast one first (the order of the side-by-side scenarios).
PATHS: tuple[RecordPath, ...] = ("fast", "pyspnego")
#: Timed 64-byte messages of the small floors: at least this many, or two per ping-pong round of the run.
SMALL_MESSAGES = 300


def established_contexts(
    users: NTLMUsers, level: ProtectionLevel, path: RecordPath = "fast"
) -> tuple[SecurityContext, SecurityContext]:
    """A client and a server SecurityContext after a real in-memory NTLM handshake, both on record ``path``.

    Raises RuntimeError when a context ended up on the other path (the floor would measure the wrong code).
    """
    with record_path_env(path):
        client, server = connection_pair(users, protection_level=level)
        handshake(client, server)
    check_record_path((client.context, server.context), path)
    return client.context, server.context


def _chunks(total: int) -> tuple[list[bytes], int]:
    """The records one 64 KiB write becomes (0xFC00 + 0x400 bytes), and how many writes make ``total``.

    The floors protect exactly the chunks the bulk scenarios' writes are split into, so a perfect adapter reaches
    the floor (the short second record of each write costs pyspnego's per-call overhead in both).
    """
    block = os.urandom(WRITE_SIZE)
    chunks = [block[offset : offset + RECORD_PLAINTEXT] for offset in range(0, WRITE_SIZE, RECORD_PLAINTEXT)]
    return chunks, max(1, total // WRITE_SIZE)


def _time_both_ends(
    chunks: list[bytes],
    count: int,
    send: Callable[[int, bytes], Any],
    receive: Callable[[int, Any], Any],
    check: Callable[[bytes, Any, Any], bool],
) -> tuple[float, float, bool]:
    """Pass ``count`` writes' ``chunks`` through ``send(seq, chunk)`` then ``receive(seq, sent)``, timing each end.

    Returns (send seconds, receive seconds, every ``check(chunk, sent, received)`` passed); the check runs outside
    the timed calls, so only the crypto is measured.
    """
    clock = time.perf_counter
    send_time = receive_time = 0.0
    verified = True
    for seq in range(count * len(chunks)):
        chunk = chunks[seq % len(chunks)]
        t0 = clock()
        sent = send(seq, chunk)
        t1 = clock()
        received = receive(seq, sent)
        t2 = clock()
        send_time += t1 - t0
        receive_time += t2 - t1
        verified = verified and check(chunk, sent, received)
    return send_time, receive_time, verified


def _floor_result(
    name: str, level: str, nbytes: int, send_time: float, receive_time: float, verified: bool, **extra: object
) -> Result:
    seconds = send_time + receive_time
    figures = {
        "protect_mbps": round(mbps(nbytes, send_time), 1),
        "unprotect_mbps": round(mbps(nbytes, receive_time), 1),
        **extra,
    }
    return measured_result(
        name, "floor", "crypto", level, mbps(nbytes, seconds), seconds, verified, nbytes=nbytes, extra=figures
    )


def crypto_floor(ctx: Context, level_name: str, path: RecordPath = "fast") -> Result:
    """Protect the records of 64 KiB writes with one established context and unprotect them with its peer.

    The value is ``bytes / (protect time + unprotect time)``: a single-process loopback benchmark does the crypto
    of both ends, so this is what a perfect zero-overhead I/O layer would reach on one core. ``one_way_mbps`` is
    ``bytes / max(protect time, unprotect time)``: the floor when each end runs on its own core (two processes or
    two machines), where the slower end bounds the stream. ``path`` picks the NTLM record code (fast or pyspnego).
    """
    sender, receiver = established_contexts(ctx.users, LEVELS[level_name], path)
    chunks, count = _chunks(ctx.config.bulk_bytes)
    protect, unprotect = sender.protect, receiver.unprotect
    for _ in range(8):  # warm up caches and lazily built state
        for chunk in chunks:
            unprotect(protect(chunk))
    protect_time, unprotect_time, verified = _time_both_ends(
        chunks,
        count,
        lambda _seq, chunk: protect(chunk),
        lambda _seq, payload: unprotect(payload),
        lambda chunk, _payload, plaintext: bool(plaintext == chunk),
    )
    nbytes = count * WRITE_SIZE
    return _floor_result(
        f"floor.context.{level_name}" + suffix_of(path),
        level_name,
        nbytes,
        protect_time,
        unprotect_time,
        verified,
        one_way_mbps=round(mbps(nbytes, max(protect_time, unprotect_time)), 1),
        records_per_write=[len(chunk) for chunk in chunks],
        record_path=check_record_path((sender, receiver), path),
    )


def _small_result(name: str, rate: float, seconds: float, ok: bool, note: str, **extra: object) -> Result:
    figures = {"us_per_message": round(1e6 / rate, 2), "note": note, **extra}
    return measured_result(name, "floor", "crypto-small", "sealed", rate, seconds, ok, unit="messages/s", extra=figures)


def small_record_floor(ctx: Context, path: RecordPath = "fast") -> Result:
    """Protect + unprotect of one 64-byte message per iteration (sealed): the crypto share of a ping-pong message.

    The value is messages per second through both ends' crypto; a round trip carries two messages. ``path`` picks
    the NTLM record code (fast or pyspnego).
    """
    sender, receiver = established_contexts(ctx.users, ProtectionLevel.ENCRYPT_AND_SIGN, path)
    message = os.urandom(PING_SIZE)
    protect, unprotect = sender.protect, receiver.unprotect

    def once() -> bool:
        return bool(unprotect(protect(message)) == message)

    for _ in range(50):
        once()
    rate, seconds, ok = best_rate(max(SMALL_MESSAGES, ctx.config.pingpong_rounds * 2), once)
    name = "floor.context.sealed-64B" + suffix_of(path)
    note = "protect + unprotect of 64 bytes, both ends"
    return _small_result(name, rate, seconds, ok, note, record_path=check_record_path((sender, receiver), path))


class RawNTLM:
    """NTLM's per-record crypto with Extended Session Security and KEY_EXCH, on ``cryptography`` and ``hmac`` alone.

    The sender RC4-encrypts the plaintext (sealed only), computes ``HMAC-MD5(sign key, seq || plaintext)[:8]``
    and RC4-encrypts that checksum with the same keystream (MS-NLMP 3.4.4.2); the receiver decrypts, recomputes
    the checksum and decrypts the sender's. No framing, no signature assembly, no library or pyspnego code: the
    floor of what any NTLM implementation in Python must spend per record.
    """

    def __init__(self, sealed: bool) -> None:
        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
        except ImportError:  # cryptography < 43 keeps ARC4 in the main algorithms module
            from cryptography.hazmat.primitives.ciphers.algorithms import ARC4  # type: ignore[no-redef,unused-ignore]
        from cryptography.hazmat.primitives.ciphers import Cipher

        self.sealed = sealed
        self.sign_key = os.urandom(16)
        seal_key = os.urandom(16)
        self._encrypt = Cipher(ARC4(seal_key), mode=None).encryptor().update
        self._decrypt = Cipher(ARC4(seal_key), mode=None).decryptor().update

    def send(self, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        """(wire data, sealed checksum) of one outgoing record."""
        wire = self._encrypt(plaintext) if self.sealed else plaintext
        checksum = hmac.digest(self.sign_key, struct.pack("<I", seq) + plaintext, "md5")[:8]
        return wire, self._encrypt(checksum)

    def receive(self, seq: int, sent: tuple[bytes, bytes]) -> tuple[bytes, bool]:
        """(plaintext, checksum matched) of one incoming record."""
        plaintext = self._decrypt(sent[0]) if self.sealed else sent[0]
        checksum = hmac.digest(self.sign_key, struct.pack("<I", seq) + plaintext, "md5")[:8]
        return plaintext, self._decrypt(sent[1]) == checksum


def primitives_floor(ctx: Context, level_name: str) -> Result:
    """The chunks of :func:`crypto_floor` through :class:`RawNTLM`: RC4 + HMAC-MD5 (sealed), HMAC-MD5 (sign)."""
    chunks, count = _chunks(ctx.config.bulk_bytes)
    sealed = level_name == "sealed"
    raw = RawNTLM(sealed)

    def check(chunk: bytes, _sent: object, received: tuple[bytes, bool]) -> bool:
        return received[1] and received[0] == chunk

    send_time, receive_time, verified = _time_both_ends(chunks, count, raw.send, raw.receive, check)
    what = "cryptography RC4 + hmac.digest MD5" if sealed else "hmac.digest MD5 (+ cryptography RC4 of the checksum)"
    return _floor_result(
        f"floor.primitives.{level_name}",
        level_name,
        count * WRITE_SIZE,
        send_time,
        receive_time,
        verified,
        primitives=what,
    )


def small_primitives_floor(ctx: Context) -> Result:
    """One 64-byte message per iteration through :class:`RawNTLM` (sealed), both ends: the raw-primitive rate
    that ``floor.context.sealed-64B`` is judged against."""
    raw = RawNTLM(sealed=True)
    send, receive = raw.send, raw.receive
    message = os.urandom(PING_SIZE)
    seq = 0

    def once() -> bool:
        nonlocal seq
        seq += 1
        plaintext, matched = receive(seq, send(seq, message))
        return matched and plaintext == message

    for _ in range(50):
        once()
    rate, seconds, ok = best_rate(max(SMALL_MESSAGES, ctx.config.pingpong_rounds * 2), once)
    note = "cryptography RC4 + hmac.digest MD5 of 64 bytes, both ends (no library code)"
    return _small_result("floor.primitives.sealed-64B", rate, seconds, ok, note)


def ntlm_options(users: NTLMUsers) -> tuple[dict[str, Any], dict[str, Any]]:
    """SecurityContext options of an NTLM client and server (sealed) with the run's test account."""
    common: dict[str, Any] = {"protocol": "ntlm", "protection_level": ProtectionLevel.ENCRYPT_AND_SIGN}
    return (
        {"credentials": users.client_credentials(), **common},
        {"credentials": users.server_credentials(), **common},
    )


def step_to_completion(client: SecurityContext, server: SecurityContext) -> bool:
    """Step two new contexts with each other's tokens in memory until both are complete; True when they are."""
    token = client.step(None)
    for _ in range(8):
        if token is None and client.complete and server.complete:
            break
        token = server.step(token)
        if server.complete and client.complete:
            break
        token = client.step(token)
    return client.complete and server.complete


def _step_loop_once(client_options: dict[str, Any], server_options: dict[str, Any]) -> bool:
    return step_to_completion(SecurityContext.client(**client_options), SecurityContext.server(**server_options))


def handshake_step_loop(ctx: Context) -> Result:
    """Handshakes/s of a bare loop: two new SecurityContexts stepping each other's tokens in memory (no framing)."""
    client_options, server_options = ntlm_options(ctx.users)
    _step_loop_once(client_options, server_options)  # the first one in a process pays one-off setup
    rate, seconds, ok = best_rate(ctx.config.handshakes, lambda: _step_loop_once(client_options, server_options))
    return handshake_result("floor.handshake.step-loop", "floor", rate, seconds, ok)


def floor_scenarios() -> list[Scenario]:
    """The floors, in report order: each fast-path floor followed by its pyspnego-path twin, then the primitives."""
    scenarios: list[Scenario] = []
    for level in ("sealed", "sign"):
        for path in PATHS:
            run = functools.partial(crypto_floor, level_name=level, path=path)
            scenarios.append(Scenario(f"floor.context.{level}{suffix_of(path)}", "floor", "crypto", level, run))
    for level in ("sealed", "sign"):
        run = functools.partial(primitives_floor, level_name=level)
        scenarios.append(Scenario(f"floor.primitives.{level}", "floor", "crypto", level, run))
    for path in PATHS:
        run = functools.partial(small_record_floor, path=path)
        scenarios.append(Scenario(f"floor.context.sealed-64B{suffix_of(path)}", "floor", "crypto-small", "sealed", run))
    return [
        *scenarios,
        Scenario("floor.primitives.sealed-64B", "floor", "crypto-small", "sealed", small_primitives_floor),
        Scenario("floor.handshake.step-loop", "floor", "handshake", "sealed", handshake_step_loop),
    ]
