"""What a Connection keeps while records stream through it: at most one partial record, and no large buffer once
the data is consumed; records parsed in place out of a lent (reused) buffer, copying only what was not parsed."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

import pytest

from negotiate_stream import (
    NEED_DATA,
    BrokenStreamError,
    Connection,
    Data,
    EndOfStream,
    HandshakeComplete,
    IntegrityError,
    ProtectionLevel,
    State,
    TruncatedStreamError,
)
from negotiate_stream._framing.nns import MAX_PLAINTEXT_PER_RECORD, NNSRecordCodec
from negotiate_stream._receive_buffer import SHORT_REST
from negotiate_stream.testing import NTLMUsers, connection_pair
from tests.support.core import drain, established

SEALED = ProtectionLevel.ENCRYPT_AND_SIGN
#: Plaintext sizes of the records sent: small messages, one full record, and writes split into several records.
SIZES = [1, 64, 100, 3000, MAX_PLAINTEXT_PER_RECORD, MAX_PLAINTEXT_PER_RECORD + 1, 200_000]
#: How the wire is cut into reads: bytes, odd sizes, just over a record, the asyncio adapter's read size.
PIECES = [1, 150, 7919, 0x10000 + 3, 256 * 1024]
#: What a bytearray may hold beyond its content: CPython over-allocates a growing one by 1/8, and one that lost a
#: prefix keeps its allocation until it is less than half full.
SLACK = 128


def capacity(conn: Connection) -> int:
    """The memory the Connection's own receive buffer holds, whatever its content."""
    return sys.getsizeof(conn._received.data)


def plaintexts(rng: random.Random, count: int = 40, piece: int = 0x10000) -> list[bytes]:
    """``count`` messages of the sizes in SIZES, in random order, each a distinct pattern (only small ones, and
    fewer, when the reads are tiny: a megabyte read a byte at a time proves nothing more, slowly)."""
    sizes = SIZES if piece > 1 else [size for size in SIZES if size <= 3000]
    return [bytes([index % 251]) * rng.choice(sizes) for index in range(count if piece > 1 else 8)]


def wire_and_ends(sender: Connection, messages: list[bytes]) -> tuple[bytes, list[int]]:
    """The wire bytes of ``messages`` and the offset where each record ends."""
    wire = b"".join(sender.send(message) for message in messages)
    codec, ends, position = NNSRecordCodec(), [], 0
    while position < len(wire):
        end = codec.locate(wire, position)
        assert end is not None
        ends.append(end)
        position = end
    return wire, ends


def cut(wire: bytes, size: int) -> Iterator[bytes]:
    """``wire`` in reads of ``size`` bytes."""
    for offset in range(0, len(wire), size):
        yield wire[offset : offset + size]


def received_data(conn: Connection) -> bytes:
    """Drain ``conn`` and return the plaintext of its Data events."""
    return b"".join(event.data for event in drain(conn) if isinstance(event, Data))


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_pieces_leave_at_most_one_partial_record(ntlm_users: NTLMUsers, kind: str, piece: int) -> None:
    """After each read is drained, only the record still arriving is held, in a buffer no larger than it needs."""
    client, server = established(ntlm_users, protection_level=SEALED)
    messages = plaintexts(random.Random(piece), piece=piece)
    wire, ends = wire_and_ends(client, messages)
    received, got = 0, bytearray()
    for chunk in cut(wire, piece):
        server.receive_data({"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](chunk))
        received += len(chunk)
        got += received_data(server)
        last_end = max([0, *(end for end in ends if end <= received)])
        assert server.buffered == received - last_end  # exactly the partial record, nothing already parsed
        assert capacity(server) <= 2 * server.buffered + SLACK
    assert bytes(got) == b"".join(messages)
    assert server.buffered == 0 and capacity(server) <= SLACK


def test_no_large_buffer_is_kept_after_the_data_is_consumed(ntlm_users: NTLMUsers) -> None:
    """A megabyte received in one copy, then consumed, leaves no megabyte-sized buffer behind."""
    client, server = established(ntlm_users, protection_level=SEALED)
    message = bytes(range(256)) * 4096
    wire = client.send(message)
    server.receive_data(bytearray(wire[:-10]))  # every record but the end of the last: all parsed but one
    assert len(received_data(server)) == len(message) - len(message) % MAX_PLAINTEXT_PER_RECORD
    assert capacity(server) <= 2 * server.buffered + SLACK
    server.receive_data(bytearray(wire[-10:]))
    assert len(received_data(server)) == len(message) % MAX_PLAINTEXT_PER_RECORD
    assert server.buffered == 0 and capacity(server) <= SLACK


def lend_through(conn: Connection, shared: bytearray, chunk: bytes, *, stop_after: int | None = None) -> list[bytes]:
    """Lend ``chunk`` to ``conn`` in ``shared`` (as the asyncio adapter does), read up to ``stop_after`` events,
    end the loan, then overwrite ``shared`` the way the next read of another connection would."""
    shared[: len(chunk)] = chunk
    conn._lend(memoryview(shared)[: len(chunk)])
    out: list[bytes] = []
    try:
        while stop_after is None or len(out) < stop_after:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Data):
                out.append(event.data)
    finally:
        conn._reclaim()
        shared[: len(chunk)] = b"\xaa" * len(chunk)
    return out


@pytest.mark.parametrize("piece", PIECES)
def test_a_lent_buffer_is_parsed_in_place_and_reused(ntlm_users: NTLMUsers, piece: int) -> None:
    """Records are read out of the caller's reused buffer; only a partial record is copied before it is reused."""
    client, server = established(ntlm_users, protection_level=SEALED)
    messages = plaintexts(random.Random(piece + 1), piece=piece)
    wire, ends = wire_and_ends(client, messages)
    shared, received, got = bytearray(256 * 1024), 0, bytearray()
    for chunk in cut(wire, piece):
        got += b"".join(lend_through(server, shared, chunk))
        received += len(chunk)
        assert server.buffered == received - max([0, *(end for end in ends if end <= received)])
        assert capacity(server) <= 2 * server.buffered + SLACK
    assert bytes(got) == b"".join(messages)


def test_connections_sharing_one_receive_buffer_keep_their_records_apart(ntlm_users: NTLMUsers) -> None:
    """Two connections read through the same buffer, alternately and in odd pieces, as on one event loop."""
    pairs = [established(ntlm_users, protection_level=SEALED) for _ in range(2)]
    rng = random.Random(7)
    messages = [plaintexts(rng, 20) for _ in pairs]
    wires = [list(cut(wire_and_ends(client, sent)[0], 5003)) for (client, _), sent in zip(pairs, messages, strict=True)]
    shared, got = bytearray(256 * 1024), [bytearray(), bytearray()]
    for index in range(max(map(len, wires))):
        for side, (_, server) in enumerate(pairs):
            if index < len(wires[side]):
                got[side] += b"".join(lend_through(server, shared, wires[side][index]))
    assert [bytes(data) for data in got] == [b"".join(sent) for sent in messages]


def test_a_reader_that_stops_early_loses_nothing(ntlm_users: NTLMUsers) -> None:
    """Records left in a lent buffer when the reader stops (an app that paused) are kept, in order."""
    client, server = established(ntlm_users, protection_level=SEALED)
    messages = [bytes([n]) * 100 for n in range(6)]
    wire = b"".join(client.send(message) for message in messages)
    shared = bytearray(4096)
    assert lend_through(server, shared, wire[:-30], stop_after=2) == messages[:2]
    assert server.buffered == len(wire) - 30 - 2 * len(wire) // 6
    assert lend_through(server, shared, wire[-30:]) == messages[2:]
    assert server.buffered == 0 and capacity(server) <= SLACK


def test_records_behind_the_last_handshake_message_survive_the_reuse(ntlm_users: NTLMUsers) -> None:
    """A loan made during the handshake is copied at once: the records behind the last message are kept."""
    client, server = connection_pair(ntlm_users, protection_level=SEALED)
    shared = bytearray(64 * 1024)
    while True:
        lend_through(server, shared, client.data_to_send())
        if server.state is State.ESTABLISHED:
            break
        client.receive_data(server.data_to_send())
        drain(client)
    chunk = server.data_to_send() + server.send(b"first") + server.send(b"second")
    shared[: len(chunk)] = chunk
    client._lend(memoryview(shared)[: len(chunk)])
    shared[:] = b"\xaa" * len(shared)  # the loan was a copy: reusing the buffer at once is harmless
    events = drain(client)
    assert isinstance(events[0], HandshakeComplete)
    assert events[1:] == [Data(b"first"), Data(b"second")]


def test_a_partial_lent_record_at_eof_is_a_truncation(ntlm_users: NTLMUsers) -> None:
    """EOF while the rest of a lent record is missing: TruncatedStreamError naming the bytes received; broken."""
    client, server = established(ntlm_users, protection_level=SEALED)
    whole, cut_short = client.send(b"whole"), client.send(b"cut short")
    shared = bytearray(1024)
    assert lend_through(server, shared, whole + cut_short[:-3]) == [b"whole"]
    server.receive_data(b"")
    with pytest.raises(TruncatedStreamError, match=f"{len(cut_short) - 3} bytes of it received"):
        server.next_event()
    assert server.state is State.BROKEN and server.buffered == 0


def test_a_tampered_lent_record_breaks_the_stream_and_drops_the_rest(ntlm_users: NTLMUsers) -> None:
    """A bad record in lent bytes raises IntegrityError; nothing after it is kept or delivered."""
    client, server = established(ntlm_users, protection_level=SEALED)
    good = client.send(b"good")
    wire = bytearray(good + client.send(b"bad") + client.send(b"after"))
    wire[len(good) + 20] ^= 1  # the second record's first ciphertext byte (after its header and signature)
    shared = bytearray(1024)
    shared[: len(wire)] = wire
    server._lend(memoryview(shared)[: len(wire)])
    assert server.next_event() == Data(b"good")
    with pytest.raises(IntegrityError):
        server.next_event()
    server._reclaim()
    assert server.buffered == 0
    with pytest.raises(BrokenStreamError):
        server.next_event()


def test_empty_records_in_lent_bytes_carry_no_event(ntlm_users: NTLMUsers) -> None:
    """A record with an empty plaintext (a peer may send one) is skipped, lent or not."""
    client, server = established(ntlm_users, protection_level=SEALED)
    empty = client.context.protect(b"")
    wire = NNSRecordCodec.encode_header(len(empty)) + empty + client.send(b"after the empty one")
    assert lend_through(server, bytearray(1024), wire) == [b"after the empty one"]


def test_protection_level_none_reads_lent_bytes_after_its_own(ntlm_users: NTLMUsers) -> None:
    """Without records, bytes kept by the Connection come out before lent ones, each once."""
    _client, server = established(ntlm_users, protection_level=ProtectionLevel.NONE)
    server.receive_data(bytearray(b"kept "))
    server._lend(memoryview(bytearray(b"lent")))
    assert drain(server) == [Data(b"kept "), Data(b"lent")]
    server.receive_data(b"")
    assert drain(server) == [EndOfStream()]


def test_bytes_chunks_are_parsed_in_place(ntlm_users: NTLMUsers) -> None:
    """receive_data(bytes) keeps no copy of whole records: the buffer stays empty while records are parsed."""
    client, server = established(ntlm_users, protection_level=SEALED)
    wire = b"".join(client.send(bytes([n]) * 1000) for n in range(8))
    server.receive_data(wire)
    assert capacity(server) <= SLACK  # lent, not copied
    assert len(drain(server)) == 8
    assert server.buffered == 0 and capacity(server) <= SLACK


#: One largest MS-NNS record frame: the 4-byte length and a 64 KiB payload.
MAX_FRAME = 4 + 0x10000


def test_reads_are_sized_to_stop_at_record_boundaries(ntlm_users: NTLMUsers) -> None:
    """_read_size(): one largest frame at a boundary, the rest of a record begun (one more frame after a short rest,
    so the 1 KiB second record of each 64 KiB write costs no read of its own), never 0 or less."""
    client, server = established(ntlm_users, protection_level=SEALED)
    messages = [b"a" * 3000, b"b" * MAX_PLAINTEXT_PER_RECORD, b"c" * 10]
    wire, ends = wire_and_ends(client, messages)
    shared, got, position = bytearray(MAX_FRAME), [], 0
    assert server._read_size() == MAX_FRAME
    first_reads = [2, 998]  # a header cut short, then part of the first record: short reads, as TCP may give
    while position < len(wire):
        size = first_reads.pop(0) if first_reads else server._read_size()
        chunk = wire[position : position + size]
        got += lend_through(server, shared, chunk)
        position += len(chunk)
        begun = [end for end in ends if end > position]
        if begun and position - max([0, *(e for e in ends if e <= position)]) >= 4:
            rest = begun[0] - position  # the rest of the record begun; after a short rest, one more record frame
            assert server._read_size() == (rest if rest > SHORT_REST else rest + MAX_FRAME)
        else:
            assert server._read_size() == MAX_FRAME
    assert got == messages
    # Whole records the app left unread are not "missing" bytes: the next read is a full one, never empty.
    more = b"".join(client.send(m) for m in (b"x" * 100, b"y" * 100))
    assert lend_through(server, shared, more, stop_after=1) == [b"x" * 100]
    assert server.buffered > 0 and server._read_size() == MAX_FRAME
