"""The floors, measured without any I/O: what the crypto alone costs, and what a bare handshake costs.

* ``floor.context.*``: one established SecurityContext protects the records of 64 KiB writes, its peer
  unprotects them (sealed and sign-only); ``floor.context.sealed-64B``: the same for one 64-byte message.
* ``floor.primitives.*``: the same records through ``cryptography`` primitives only (no pyspnego).
* ``floor.handshake.step-loop``: two new SecurityContexts stepping each other's NTLM tokens in memory.
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from negotiate_stream import ProtectionLevel, SecurityContext
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

from .config import RECORD_PLAINTEXT, WRITE_SIZE
from .registry import LEVELS, Context, Scenario, per_level
from .results import Result, best_rate, handshake_result, mbps, measured_result

__all__ = [
    "crypto_floor",
    "established_contexts",
    "floor_scenarios",
    "handshake_step_loop",
    "primitives_floor",
    "small_record_floor",
]


def established_contexts(users: NTLMUsers, level: ProtectionLevel) -> tuple[SecurityContext, SecurityContext]:
    """A client and a server SecurityContext after a real in-memory NTLM handshake."""
    client, server = connection_pair(users, protection_level=level)
    handshake(client, server)
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


def crypto_floor(ctx: Context, level_name: str) -> Result:
    """Protect the records of 64 KiB writes with one established context and unprotect them with its peer.

    The value is ``bytes / (protect time + unprotect time)``: a single-process loopback benchmark does the crypto
    of both ends, so this is what a perfect zero-overhead I/O layer would reach on one core. ``one_way_mbps`` is
    ``bytes / max(protect time, unprotect time)``: the floor when each end runs on its own core (two processes or
    two machines), where the slower end bounds the stream.
    """
    sender, receiver = established_contexts(ctx.users, LEVELS[level_name])
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
        f"floor.context.{level_name}",
        level_name,
        nbytes,
        protect_time,
        unprotect_time,
        verified,
        one_way_mbps=round(mbps(nbytes, max(protect_time, unprotect_time)), 1),
        records_per_write=[len(chunk) for chunk in chunks],
    )


def small_record_floor(ctx: Context) -> Result:
    """Protect + unprotect of one 64-byte message per iteration (sealed): the crypto share of a ping-pong message.

    The value is messages per second through both ends' crypto; a round trip carries two messages.
    """
    sender, receiver = established_contexts(ctx.users, ProtectionLevel.ENCRYPT_AND_SIGN)
    message = os.urandom(64)

    def once() -> bool:
        return bool(receiver.unprotect(sender.protect(message)) == message)

    for _ in range(50):
        once()
    rate, seconds, ok = best_rate(max(300, ctx.config.pingpong_rounds * 2), once)
    figures = {"us_per_message": round(1e6 / rate, 2), "note": "protect + unprotect of 64 bytes, both ends"}
    name = "floor.context.sealed-64B"
    return measured_result(name, "floor", "crypto-small", "sealed", rate, seconds, ok, unit="messages/s", extra=figures)


def primitives_floor(ctx: Context, level_name: str) -> Result:
    """The same chunks through ``cryptography`` alone: RC4 + HMAC-MD5 (sealed) or HMAC-MD5 (sign), both ends.

    This is NTLM's per-record work without pyspnego's Python code: sender RC4-encrypts and HMACs
    ``seq + plaintext``, receiver RC4-decrypts and HMACs again to verify.
    """
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
    except ImportError:  # cryptography < 43 keeps ARC4 in the main algorithms module
        from cryptography.hazmat.primitives.ciphers.algorithms import ARC4  # type: ignore[no-redef,unused-ignore]
    from cryptography.hazmat.primitives.ciphers import Cipher

    chunks, count = _chunks(ctx.config.bulk_bytes)
    sign_key = os.urandom(16)
    seal_key = os.urandom(16)
    sealed = level_name == "sealed"
    encryptor = Cipher(ARC4(seal_key), mode=None).encryptor()
    decryptor = Cipher(ARC4(seal_key), mode=None).decryptor()

    def send(seq: int, chunk: bytes) -> tuple[bytes, bytes]:
        wire = encryptor.update(chunk) if sealed else chunk
        return wire, hmac.digest(sign_key, struct.pack("<I", seq) + chunk, "md5")[:8]

    def receive(seq: int, sent: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        plaintext = decryptor.update(sent[0]) if sealed else sent[0]
        return plaintext, hmac.digest(sign_key, struct.pack("<I", seq) + plaintext, "md5")[:8]

    def check(chunk: bytes, sent: tuple[bytes, bytes], received: tuple[bytes, bytes]) -> bool:
        return received[1] == sent[1] and received[0] == chunk

    send_time, receive_time, verified = _time_both_ends(chunks, count, send, receive, check)
    what = "RC4 + HMAC-MD5" if sealed else "HMAC-MD5"
    return _floor_result(
        f"floor.primitives.{level_name}",
        level_name,
        count * WRITE_SIZE,
        send_time,
        receive_time,
        verified,
        primitives=f"cryptography {what}",
    )


def ntlm_options(users: NTLMUsers) -> tuple[dict[str, Any], dict[str, Any]]:
    """SecurityContext options of an NTLM client and server (sealed) with the run's test account."""
    common: dict[str, Any] = {"protocol": "ntlm", "protection_level": ProtectionLevel.ENCRYPT_AND_SIGN}
    return (
        {"credentials": users.client_credentials(), **common},
        {"credentials": users.server_credentials(), **common},
    )


def _step_loop_once(client_options: dict[str, Any], server_options: dict[str, Any]) -> bool:
    client = SecurityContext.client(**client_options)
    server = SecurityContext.server(**server_options)
    token = client.step(None)
    for _ in range(8):
        if token is None and client.complete and server.complete:
            break
        token = server.step(token)
        if server.complete and client.complete:
            break
        token = client.step(token)
    return client.complete and server.complete


def handshake_step_loop(ctx: Context) -> Result:
    """Handshakes/s of a bare loop: two new SecurityContexts stepping each other's tokens in memory (no framing)."""
    client_options, server_options = ntlm_options(ctx.users)
    _step_loop_once(client_options, server_options)  # the first one in a process pays one-off setup
    rate, seconds, ok = best_rate(ctx.config.handshakes, lambda: _step_loop_once(client_options, server_options))
    return handshake_result("floor.handshake.step-loop", "floor", rate, seconds, ok)


def floor_scenarios() -> list[Scenario]:
    """The floors, in report order."""
    return [
        *per_level("floor.context.{level}", "floor", "crypto", crypto_floor),
        *per_level("floor.primitives.{level}", "floor", "crypto", primitives_floor),
        Scenario("floor.context.sealed-64B", "floor", "crypto-small", "sealed", small_record_floor),
        Scenario("floor.handshake.step-loop", "floor", "handshake", "sealed", handshake_step_loop),
    ]
