"""Bit-exact differential tests of the NTLM record fast path (negotiate_stream._ntlm_records) against pyspnego.

Every case runs a real pyspnego NTLM handshake (raw NTLM or SPNEGO), reads each side's record state with
:func:`negotiate_stream._spnego.ntlm_takeover.ntlm_record_state` and builds our cipher next to pyspnego's context
on both sides. From then on the two twins of a side are fed the same calls: every sealed record and every
signature must be equal byte for byte, and each receiver (pyspnego's and ours) must accept the other's records. Key
sizes 128/56/40 bits come from the client's NEGOTIATE_MESSAGE with NEGOTIATE_128/56 cleared, KEY_EXCH off likewise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import spnego
from hypothesis import given, settings
from hypothesis import strategies as st
from spnego._ntlm_raw.crypto import sealkey, signkey
from spnego.exceptions import BadMICError

from negotiate_stream._ntlm_records import (
    NTLMRecordCipher,
    NTLMRecordState,
    UnsupportedNTLMState,
    covers,
    derive_keys,
)
from negotiate_stream.errors import SEC_E_MESSAGE_ALTERED, BrokenStreamError, ContextExpiredError, IntegrityError
from negotiate_stream.testing import NTLMUsers
from tests.support.ntlm import handshaken_pair, ntlm_record_state

KEY_EXCH = 0x40000000
NEGOTIATE_128 = 0x20000000
NEGOTIATE_56 = 0x80000000
ESS = 0x00080000
SIGN = 0x00000010
SEAL = 0x00000020
DATAGRAM = 0x00000040

# (flags cleared from the client's NEGOTIATE_MESSAGE, id): each key size with and without key exchange.
VARIANTS = [
    pytest.param(0, id="128bit-keyexch"),
    pytest.param(KEY_EXCH, id="128bit-no-keyexch"),
    pytest.param(NEGOTIATE_128, id="56bit-keyexch"),
    pytest.param(NEGOTIATE_128 | KEY_EXCH, id="56bit-no-keyexch"),
    pytest.param(NEGOTIATE_128 | NEGOTIATE_56, id="40bit-keyexch"),
    pytest.param(NEGOTIATE_128 | NEGOTIATE_56 | KEY_EXCH, id="40bit-no-keyexch"),
]
PROTOCOLS = ["ntlm", "negotiate"]
MESSAGES = [b"", b"x", b"hello NTLM", bytes(range(256)) * 3, b"\x00" * 64]
EXAMPLES = 400 if os.environ.get("CI") else 40


@dataclass
class Side:
    """One end of a session: pyspnego's context and our cipher, fed the same calls (twins)."""

    pyspnego: spnego.ContextProxy
    fast: NTLMRecordCipher


@dataclass
class Session:
    """Both ends of a handshaken NTLM session, each with its two twins."""

    client: Side
    server: Side

    def ends(self, from_client: bool) -> tuple[Side, Side]:
        """``(sender, receiver)`` for one direction."""
        return (self.client, self.server) if from_client else (self.server, self.client)

    def seal(self, from_client: bool, message: bytes) -> bytes:
        """Seal on both twins of the sender, compare, unseal on both twins of the receiver crosswise."""
        sender, receiver = self.ends(from_client)
        expected = sender.pyspnego.wrap(message).data
        record = sender.fast.seal(message)
        assert record == expected
        assert receiver.pyspnego.unwrap(record).data == message  # pyspnego accepts ours
        assert receiver.fast.unseal(expected) == message  # we accept pyspnego's
        return record

    def sign(self, from_client: bool, message: bytes) -> bytes:
        """Sign on both twins of the sender, compare, verify on both twins of the receiver crosswise."""
        sender, receiver = self.ends(from_client)
        expected = sender.pyspnego.sign(message)
        signature = sender.fast.sign(message)
        assert signature == expected
        receiver.pyspnego.verify(message, signature)
        receiver.fast.verify(message, expected)
        return signature


def attach(
    client: spnego.ContextProxy, server: spnego.ContextProxy
) -> tuple[Session, NTLMRecordState, NTLMRecordState]:
    """Our cipher attached to each side of a handshaken pyspnego pair, from the record state read off each side;
    returns the session and both states."""
    client_state, server_state = ntlm_record_state(client), ntlm_record_state(server)
    assert client_state is not None and server_state is not None
    session = Session(Side(client, NTLMRecordCipher(client_state)), Side(server, NTLMRecordCipher(server_state)))
    return session, client_state, server_state


def open_session(
    users: NTLMUsers, protocol: str = "ntlm", clear_flags: int = 0, *, lm_compat_level: int | None = None
) -> Session:
    """A handshaken pyspnego pair with our cipher attached to each side."""
    client, server = handshaken_pair(users, protocol, clear_flags=clear_flags, lm_compat_level=lm_compat_level)
    return attach(client, server)[0]


def used_pair(users: NTLMUsers, protocol: str, *, signatures: bool) -> tuple[spnego.ContextProxy, spnego.ContextProxy]:
    """A handshaken pyspnego pair whose records went through pyspnego: each of MESSAGES sealed client to server,
    each followed by a server signature if ``signatures``."""
    client, server = handshaken_pair(users, protocol)
    for message in MESSAGES:
        assert server.unwrap(client.wrap(message).data).data == message
        if signatures:
            client.verify(message, server.sign(message))
    return client, server


def seal_and_sign_each(session: Session, *, seal_from_client: bool) -> None:
    """Each of MESSAGES sealed in one direction, then signed in the other, every record compared across twins."""
    for message in MESSAGES:
        session.seal(seal_from_client, message)
        session.sign(not seal_from_client, message)


def assert_keystreams(client: NTLMRecordState, server: NTLMRecordState, *, to_server: int, to_client: int) -> None:
    """Both sides agree on the RC4 keystream used so far: ``to_server`` bytes client to server (each sealed record:
    message then encrypted checksum), ``to_client`` bytes server to client."""
    assert (client.keystream_out, client.keystream_in) == (to_server, to_client)
    assert (server.keystream_in, server.keystream_out) == (to_server, to_client)


# --- MS-NLMP test vectors ---------------------------------------------------------------------------------------

# MS-NLMP 4.2.4 (NTLMv2): RandomSessionKey, challenge flags, and the 4.2.4.4 GSS_WrapEx example.
SPEC_SESSION_KEY = b"\x55" * 16
SPEC_FLAGS = 0xE28A8233
SPEC_SEAL_KEY = bytes.fromhex("59f600973cc4960a25480a7c196e4c58")
SPEC_SIGN_KEY = bytes.fromhex("4788dc861b4782f35d43fd98fe1a2d39")
SPEC_PLAINTEXT = "Plaintext".encode("utf-16-le")
# One MS-NNS data record (DESIGN.md section 2): uint32 LE length 0x22 + signature + ciphertext.
SPEC_RECORD = bytes.fromhex("22000000010000007fb38ec5c55d49760000000054e50165bf1936dc996020c1811b0f06fb5f")


def test_derive_keys_matches_ms_nlmp_4_2_4_4() -> None:
    """SIGNKEY/SEALKEY of the MS-NLMP 4.2.4.4 example, seen from the client (out) and from the server (in)."""
    client = derive_keys(SPEC_SESSION_KEY, SPEC_FLAGS, initiator=True)
    server = derive_keys(SPEC_SESSION_KEY, SPEC_FLAGS, initiator=False)
    assert (client.seal_out, client.sign_out) == (SPEC_SEAL_KEY, SPEC_SIGN_KEY)
    assert (server.seal_in, server.sign_in) == (SPEC_SEAL_KEY, SPEC_SIGN_KEY)
    assert (client.seal_in, client.sign_in) == (server.seal_out, server.sign_out)


def test_seal_matches_ms_nlmp_4_2_4_4_record() -> None:
    """Sealing "Plaintext" at seq 0 gives the spec's signature and ciphertext; the acceptor unseals it."""
    client = NTLMRecordCipher(NTLMRecordState(SPEC_SESSION_KEY, SPEC_FLAGS, initiator=True))
    server = NTLMRecordCipher(NTLMRecordState(SPEC_SESSION_KEY, SPEC_FLAGS, initiator=False))
    payload = client.seal(SPEC_PLAINTEXT)
    assert len(payload).to_bytes(4, "little") + payload == SPEC_RECORD
    assert server.unseal(SPEC_RECORD[4:]) == SPEC_PLAINTEXT


@pytest.mark.parametrize(
    ("flags", "kept"),
    [(SPEC_FLAGS, 16), (SPEC_FLAGS & ~NEGOTIATE_128, 7), (SPEC_FLAGS & ~(NEGOTIATE_128 | NEGOTIATE_56), 5)],
    ids=["128bit", "56bit", "40bit"],
)
def test_seal_key_reduction_follows_ms_nlmp_3_4_5_3(flags: int, kept: int) -> None:
    """With ESS, NEGOTIATE_128/56/neither keep 16/7/5 bytes of the session key before the MD5 (SEALKEY)."""
    keys = derive_keys(SPEC_SESSION_KEY, flags, initiator=True)
    constant = b"session key to client-to-server sealing key magic constant\x00"
    assert keys.seal_out == hashlib.md5(SPEC_SESSION_KEY[:kept] + constant).digest()
    assert keys.sign_out == SPEC_SIGN_KEY  # SIGNKEY always uses the full key


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(session_key=st.binary(min_size=16, max_size=16), flags=st.integers(0, 0xFFFFFFFF), initiator=st.booleans())
def test_derive_keys_matches_pyspnego(session_key: bytes, flags: int, initiator: bool) -> None:
    """derive_keys equals pyspnego's signkey/sealkey for any flags (ESS or not, any key size) and either role."""
    ours, theirs = ("initiate", "accept") if initiator else ("accept", "initiate")
    keys = derive_keys(session_key, flags, initiator=initiator)
    assert keys.sign_out == signkey(flags, session_key, ours)
    assert keys.sign_in == signkey(flags, session_key, theirs)
    assert keys.seal_out == sealkey(flags, session_key, ours)
    assert keys.seal_in == sealkey(flags, session_key, theirs)


# --- where pyspnego stands after the handshake ------------------------------------------------------------------


@pytest.mark.parametrize("clear_flags", VARIANTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_post_handshake_state(ntlm_users: NTLMUsers, protocol: str, clear_flags: int) -> None:
    """Negotiated key bits follow the offer; SPNEGO's mechListMIC leaves seq 1 and a reset (fresh) keystream."""
    client, server = handshaken_pair(ntlm_users, protocol, clear_flags=clear_flags)
    states = [ntlm_record_state(client), ntlm_record_state(server)]
    expected_seq = 1 if protocol == "negotiate" else 0
    for state, initiator in zip(states, (True, False), strict=True):
        assert state is not None
        assert state.initiator is initiator
        assert state.flags & ESS and state.flags & SIGN
        assert not state.flags & clear_flags
        assert state.flags & KEY_EXCH == KEY_EXCH & ~clear_flags
        assert (state.seq_out, state.seq_in) == (expected_seq, expected_seq)
        assert (state.keystream_out, state.keystream_in) == (0, 0)
    assert states[0].session_key == states[1].session_key == client.session_key  # type: ignore[union-attr]


# --- differential: fixed sequences, every variant ---------------------------------------------------------------


@pytest.mark.parametrize("clear_flags", VARIANTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sealed_records_match_pyspnego(ntlm_users: NTLMUsers, protocol: str, clear_flags: int) -> None:
    """Sealed records in both directions are byte-identical to pyspnego's wrap() and unwrap crosswise."""
    session = open_session(ntlm_users, protocol, clear_flags)
    for message in MESSAGES:
        session.seal(True, message)
        session.seal(False, message[::-1])
        session.seal(True, message + b"!")


@pytest.mark.parametrize("clear_flags", VARIANTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_signatures_match_pyspnego(ntlm_users: NTLMUsers, protocol: str, clear_flags: int) -> None:
    """Sign-only signatures in both directions are byte-identical to pyspnego's sign() and verify crosswise."""
    session = open_session(ntlm_users, protocol, clear_flags)
    for message in MESSAGES:
        session.sign(False, message)
        session.sign(True, message)
        session.sign(False, message * 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sign_level_context_matches_pyspnego(ntlm_users: NTLMUsers, protocol: str) -> None:
    """Without SEAL negotiated, sign-only and the sealed sign-only layout (gss-ntlmssp at Sign) stay bit-exact."""
    integrity = spnego.ContextReq.integrity | spnego.ContextReq.replay_detect | spnego.ContextReq.sequence_detect
    session, client_state, _ = attach(*handshaken_pair(ntlm_users, protocol, context_req=integrity))
    assert not client_state.flags & SEAL
    for message in MESSAGES:
        session.sign(True, message)
        session.seal(False, message)


@pytest.mark.parametrize("lm_compat_level", [1, 2])
def test_ntlmv1_with_ess_matches_pyspnego(ntlm_users: NTLMUsers, lm_compat_level: int) -> None:
    """An NTLMv1 client with Extended Session Security is covered and stays bit-exact too."""
    seal_and_sign_each(open_session(ntlm_users, "ntlm", lm_compat_level=lm_compat_level), seal_from_client=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_takeover_after_pyspnego_records_continues_keystream(ntlm_users: NTLMUsers, protocol: str) -> None:
    """Taking over after records went through pyspnego continues at the measured keystream position."""
    client, server = used_pair(ntlm_users, protocol, signatures=True)
    session, client_state, server_state = attach(client, server)
    sent = sum(len(m) + 8 for m in MESSAGES)  # each sealed record: message then the encrypted checksum
    assert_keystreams(client_state, server_state, to_server=sent, to_client=8 * len(MESSAGES))
    seal_and_sign_each(session, seal_from_client=False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_read_gives_the_probed_keystream_back(ntlm_users: NTLMUsers, protocol: str) -> None:
    """A keystream position beyond the search limit refuses the state after probing; pyspnego stays in step."""
    client, server = used_pair(ntlm_users, protocol, signatures=False)
    assert ntlm_record_state(client, search_limit=8) is None
    assert ntlm_record_state(server, search_limit=8) is None
    for message in MESSAGES:  # the probes were given back: pyspnego's records are still accepted both ways
        assert server.unwrap(client.wrap(message).data).data == message
        assert client.unwrap(server.wrap(message[::-1]).data).data == message[::-1]
        client.verify(message, server.sign(message))
    session, client_state, server_state = attach(client, server)
    sent = sum(len(m) + 8 for m in MESSAGES)
    assert_keystreams(client_state, server_state, to_server=2 * sent, to_client=sent + 8 * len(MESSAGES))
    seal_and_sign_each(session, seal_from_client=True)  # reading twice (probing twice) left both twins identical


# --- differential: random interleavings -------------------------------------------------------------------------

operations = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["seal", "sign"]), st.binary(max_size=300)), min_size=1, max_size=25
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    protocol=st.sampled_from(PROTOCOLS),
    clear_flags=st.sampled_from([p.values[0] for p in VARIANTS]),
    ops=operations,
)
def test_random_interleavings_match_pyspnego(
    ntlm_users: NTLMUsers, protocol: str, clear_flags: int, ops: list[tuple[bool, str, bytes]]
) -> None:
    """Random mixes of sealed and signed records in both directions stay byte-identical to pyspnego."""
    session = open_session(ntlm_users, protocol, clear_flags)
    for from_client, kind, message in ops:
        (session.seal if kind == "seal" else session.sign)(from_client, message)


# --- buffers ----------------------------------------------------------------------------------------------------


def test_seal_parts_are_the_sealed_record_before_the_join(ntlm_users: NTLMUsers) -> None:
    """seal_parts() gives (signature, ciphertext) whose join is pyspnego's wrap, and advances the state like seal()."""
    session = open_session(ntlm_users)
    for message in (b"x", b"framed records join header, signature and ciphertext once", bytes(0xFC00)):
        signature, ciphertext = session.client.fast.seal_parts(memoryview(message))
        assert len(signature) == 16 and len(ciphertext) == len(message)
        assert signature + ciphertext == session.client.pyspnego.wrap(message).data
        assert session.server.fast.unseal(signature + ciphertext) == message
        assert session.server.pyspnego.unwrap(signature + ciphertext).data == message
    session.seal(True, b"and the next sealed record still matches")


def test_every_buffer_type_gives_the_same_records(ntlm_users: NTLMUsers) -> None:
    """bytes, bytearray and memoryview (also a slice of a larger buffer) are read in place, same output."""
    message = b"buffer types must not matter"
    session = open_session(ntlm_users)
    wire = bytearray(b"##")
    for data in (message, bytearray(message), memoryview(message), memoryview(b"--" + message + b"--")[2:-2]):
        expected = session.client.pyspnego.wrap(message).data
        assert session.client.fast.seal(data) == expected
        wire[2:] = expected
        assert session.server.fast.unseal(memoryview(wire)[2:]) == message
        assert session.server.pyspnego.unwrap(expected).data == message
        signature = session.server.fast.sign(data)
        assert signature == session.server.pyspnego.sign(message)
        session.client.fast.verify(data, bytearray(signature))
        session.client.pyspnego.verify(message, signature)


# --- refusals ---------------------------------------------------------------------------------------------------


def test_ntlm_without_ess_is_refused_and_left_to_pyspnego(ntlm_users: NTLMUsers) -> None:
    """NTLMv1 without ESS (one shared RC4 state): no state is read, no cipher built, pyspnego still works."""
    client, server = handshaken_pair(ntlm_users, "ntlm", lm_compat_level=0)
    assert ntlm_record_state(client) is None and ntlm_record_state(server) is None
    flags = int(client._context_attr)
    assert not flags & ESS and not covers(flags)
    state = NTLMRecordState(client.session_key, flags, initiator=True)
    assert NTLMRecordCipher.create(state) is None
    with pytest.raises(UnsupportedNTLMState):
        NTLMRecordCipher(state)
    assert server.unwrap(client.wrap(b"still pyspnego").data).data == b"still pyspnego"
    assert client.unwrap(server.wrap(b"both ways").data).data == b"both ways"


VALID = NTLMRecordState(SPEC_SESSION_KEY, SPEC_FLAGS, initiator=True)


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(replace(VALID, flags=SPEC_FLAGS & ~ESS), id="no-ess"),
        pytest.param(replace(VALID, flags=SPEC_FLAGS & ~SIGN), id="no-sign"),
        pytest.param(replace(VALID, flags=SPEC_FLAGS | DATAGRAM), id="datagram"),
        pytest.param(replace(VALID, session_key=b"\x55" * 8), id="short-session-key"),
        pytest.param(replace(VALID, seq_out=1 << 32), id="seq-out-too-large"),
        pytest.param(replace(VALID, seq_in=-1), id="negative-seq-in"),
        pytest.param(replace(VALID, keystream_in=-1), id="negative-keystream"),
    ],
)
def test_uncovered_states_are_refused(state: NTLMRecordState) -> None:
    """Every state outside ESS+SIGN streams (or with impossible values) is refused, never half-supported."""
    assert NTLMRecordCipher.create(state) is None
    with pytest.raises(UnsupportedNTLMState):
        NTLMRecordCipher(state)


def test_state_reader_refuses_incomplete_and_non_ntlm_contexts(ntlm_users: NTLMUsers) -> None:
    """An unfinished handshake yields no state; neither does a context that is not pyspnego's NTLM."""
    creds = ntlm_users.client_credentials()
    client = spnego.client(f"{creds.domain}\\{creds.username}", creds.password, hostname="h", protocol="ntlm")
    client.step()
    assert ntlm_record_state(client) is None
    assert ntlm_record_state(object()) is None  # type: ignore[arg-type]


def test_state_repr_hides_the_session_key() -> None:
    """The exported session key never appears in the state's repr (logs, tracebacks)."""
    state = NTLMRecordState(bytes(range(16)), SPEC_FLAGS, initiator=True)
    assert bytes(range(16)).hex() not in repr(state) and repr(bytes(range(16))) not in repr(state)


def test_sequence_number_space_is_finite() -> None:
    """Seq 0xFFFFFFFF is the last record each way; the next raises ContextExpiredError, nothing is reused."""
    last = (1 << 32) - 1
    client = NTLMRecordCipher(replace(VALID, seq_out=last))
    server = NTLMRecordCipher(replace(VALID, initiator=False, seq_in=last))
    record = client.seal(b"last")
    assert record[12:16] == b"\xff\xff\xff\xff"
    assert server.unseal(record) == b"last"
    with pytest.raises(ContextExpiredError):
        client.seal(b"one more")
    with pytest.raises(ContextExpiredError):
        client.sign(b"one more")
    with pytest.raises(ContextExpiredError):
        server.unseal(record)


# --- tampering: typed error, nothing returned, pyspnego rejects too, sticky afterwards --------------------------


def flip(data: bytes, index: int) -> bytes:
    """``data`` with the low bit of byte ``index`` flipped."""
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def assert_broken(side: Side) -> None:
    """Every later call on our cipher, in either direction, raises BrokenStreamError caused by the failure."""
    assert side.fast.broken
    calls: list[Callable[[], object]] = [
        lambda: side.fast.seal(b"after"),
        lambda: side.fast.sign(b"after"),
        lambda: side.fast.unseal(bytes(32)),
        lambda: side.fast.verify(b"after", bytes(16)),
    ]
    for call in calls:
        with pytest.raises(BrokenStreamError) as info:
            call()
        assert isinstance(info.value.__cause__, IntegrityError)


def assert_rejected(receiver: Side, unseal: bool, *args: bytes) -> None:
    """Both twins of the receiver reject the same input: ours with IntegrityError (SEC_E_MESSAGE_ALTERED)."""
    with pytest.raises(BadMICError):
        (receiver.pyspnego.unwrap if unseal else receiver.pyspnego.verify)(*args)
    with pytest.raises(IntegrityError) as info:
        (receiver.fast.unseal if unseal else receiver.fast.verify)(*args)
    assert info.value.status == SEC_E_MESSAGE_ALTERED


def truncated(size: int) -> Callable[[bytes], bytes]:
    """A tampering that keeps only the first ``size`` bytes of a record."""
    return lambda record: record[:size]


SEALED_TAMPERING = {
    "version": lambda record: flip(record, 0),
    "checksum": lambda record: flip(record, 9),
    "sequence": lambda record: flip(record, 13),
    "ciphertext": lambda record: flip(record, 20),
    "appended-byte": lambda record: record + b"\x00",
    "dropped-last-byte": lambda record: record[:-1],
    **{f"truncated-to-{n}": truncated(n) for n in (0, 1, 15)},
}


@pytest.mark.parametrize("tamper", SEALED_TAMPERING.values(), ids=SEALED_TAMPERING.keys())
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tampered_sealed_record_is_rejected(
    ntlm_users: NTLMUsers, protocol: str, tamper: Callable[[bytes], bytes]
) -> None:
    """A tampered or truncated sealed record raises IntegrityError, returns nothing, and breaks the cipher."""
    session = open_session(ntlm_users, protocol)
    session.seal(True, b"before")
    record = session.client.fast.seal(b"transfer 100 EUR to account 12345")
    session.client.pyspnego.wrap(b"transfer 100 EUR to account 12345")  # keep the sender twins in step
    assert_rejected(session.server, True, tamper(record))
    assert_broken(session.server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("order", ["replay-last", "replay-older", "skip-one"])
def test_replayed_reordered_or_dropped_record_is_rejected(ntlm_users: NTLMUsers, protocol: str, order: str) -> None:
    """Records delivered twice, out of order or after a dropped one fail, then the cipher is broken."""
    session = open_session(ntlm_users, protocol)
    first = session.seal(False, b"first")
    second = session.seal(False, b"second")
    third = session.server.fast.seal(b"third")
    session.server.pyspnego.wrap(b"third")  # keep the sender twins in step
    if order == "skip-one":  # "third" is produced, never delivered; the next one arrives in its place
        session.server.fast.seal(b"fourth")
        session.server.pyspnego.wrap(b"fourth")
        wrong = session.server.fast.seal(b"fifth")
        session.server.pyspnego.wrap(b"fifth")
    else:
        wrong = second if order == "replay-last" else first
    assert third not in (first, second)
    assert_rejected(session.client, True, wrong)
    assert_broken(session.client)


SIGNED_TAMPERING = {
    "data": lambda data, sig: (flip(data, 0), sig),
    "version": lambda data, sig: (data, flip(sig, 0)),
    "checksum": lambda data, sig: (data, flip(sig, 5)),
    "sequence": lambda data, sig: (data, flip(sig, 15)),
    "signature-truncated": lambda data, sig: (data, sig[:15]),
    "signature-empty": lambda data, sig: (data, b""),
    "signature-extended": lambda data, sig: (data, sig + b"\x00"),
}


@pytest.mark.parametrize("tamper", SIGNED_TAMPERING.values(), ids=SIGNED_TAMPERING.keys())
def test_tampered_signed_record_is_rejected(
    ntlm_users: NTLMUsers, tamper: Callable[[bytes, bytes], tuple[bytes, bytes]]
) -> None:
    """A sign-only record with changed data or signature raises IntegrityError and breaks the cipher."""
    session = open_session(ntlm_users, "negotiate")
    message = b"signed, not sealed"
    signature = session.client.fast.sign(message)
    session.client.pyspnego.sign(message)
    data, sig = tamper(message, signature)
    assert_rejected(session.server, False, data, sig)
    assert_broken(session.server)


def test_replayed_signature_is_rejected(ntlm_users: NTLMUsers) -> None:
    """A sign-only record verified a second time fails (its sequence number is used up)."""
    session = open_session(ntlm_users)
    signature = session.sign(True, b"once")
    assert_rejected(session.server, False, b"once", signature)
    assert_broken(session.server)
