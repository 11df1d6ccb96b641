"""Taking NTLM records over from pyspnego after the handshake (part of the pyspnego border, see :mod:`.._spnego`).

The handshake always runs in pyspnego. When it completes, :func:`take_over` reads where pyspnego's NTLM context
stands (:func:`ntlm_record_state`) and hands that state to two
:class:`~negotiate_stream._ntlm_records.NTLMRecordCipher` instances (:class:`NTLMFastPath`), which then protect and
unprotect every small record 2.5 to 4 times faster than pyspnego's per-call Python (64 B sealed, both ends: ~5 us
against ~20 us). Anything this module is not sure about - not pyspnego's own NTLM (Kerberos, SSPI), NTLM without
Extended Session Security, a private attribute missing or of another shape (another pyspnego version), keys that
differ from our MS-NLMP 3.4.5 derivation, a keystream position that cannot be located - gives ``None``, and the
caller keeps pyspnego for the records, whose context is then exactly as it was.

``NEGOTIATE_STREAM_NTLM_FAST_PATH=0`` (also ``false``, ``no``, ``off``) in the environment switches the takeover off:
every context that completes its handshake while it is set keeps pyspnego's record functions.

What is read from pyspnego 0.12 (all on ``spnego._ntlm.NTLMProxy`` and its ``RC4Handle`` objects):

- ``_context_attr``: the negotiated NegotiateFlags (ESS, SIGN, KEY_EXCH, key size);
- ``_NTLMProxy__seq_num_out`` / ``_NTLMProxy__seq_num_in`` (the name-mangled counters, read through ``vars()``);
- ``_sign_key_out`` / ``_sign_key_in`` and each handle's ``_key`` (the sealing key): compared with
  :func:`~negotiate_stream._ntlm_records.derive_keys`, so a version that derives or stores keys differently is
  refused instead of trusted;
- ``_handle_out`` / ``_handle_in`` (RC4Handle) and their ``_handle`` (cryptography's ARC4 encryptor), whose
  keystream position is *measured* (:func:`_keystream_position`), not assumed.

Why this is safe: the keys are recomputed from the public ``session_key`` and compared, the keystream positions
are measured against a fresh keystream of those keys, the counters must be ints, and every read is guarded, so a
changed private API makes the takeover refuse rather than produce wrong records (only a counter kept under the same
name with another meaning could slip through, and the differential tests - tests/core/test_ntlm_records.py and
test_record_paths.py, bit-exact against pyspnego - catch that on an upgrade).

What is written: a measurement gives the probed keystream back through a stand-in (:class:`_GiveBack`) in the
handle's ``_handle`` slot, so pyspnego's RC4 state is never left consumed, whether the takeover happens or not; and
after a takeover pyspnego's ``_handle_out`` / ``_handle_in`` are set to ``None`` (and their ``_handle`` too, which
frees pyspnego's RC4 states at once), so a stray pyspnego ``wrap``/``sign`` on the context fails (NoContextError)
instead of reusing RC4 keystream our cipher already used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import spnego
from spnego._ntlm import NTLMProxy

from .._ntlm_records import Buffer, NTLMRecordCipher, NTLMRecordState, arc4, covers, derive_keys
from .records import mechanism

__all__ = [
    "FAST_PATH_VARIABLE",
    "SEARCH_LIMIT",
    "NTLMFastPath",
    "fast_path_enabled",
    "ntlm_record_state",
    "take_over",
]

#: The environment variable that switches the NTLM record fast path off when set to ``0``.
FAST_PATH_VARIABLE = "NEGOTIATE_STREAM_NTLM_FAST_PATH"
_OFF = frozenset({"0", "false", "no", "off"})

_PROBE = 16  # keystream bytes read to locate a position: a false match has probability ~ limit / 2**128
#: How far into its keystream a handle may be for the position to be found. A handshake leaves it at 0 (raw NTLM
#: never used it, SPNEGO resets it after the mechListMIC), or at 8-16 bytes on a pyspnego that did not reset.
SEARCH_LIMIT = 65536

# The name-mangled sequence counters of NTLMProxy (``self.__seq_num_out`` in its class body).
_SEQ_OUT = "_NTLMProxy__seq_num_out"
_SEQ_IN = "_NTLMProxy__seq_num_in"


def fast_path_enabled() -> bool:
    """False when ``$NEGOTIATE_STREAM_NTLM_FAST_PATH`` is ``0`` (or false/no/off): records then stay in pyspnego."""
    return os.environ.get(FAST_PATH_VARIABLE, "").strip().lower() not in _OFF


@dataclass(frozen=True, slots=True)
class NTLMFastPath:
    """The NTLM record ciphers that replaced pyspnego's for one complete context.

    Two ciphers built from the same state, one per direction: ``outgoing`` only ever seals/signs and ``incoming``
    only ever unseals/verifies. A cipher refuses both directions once a record fails, but pyspnego's context kept
    protecting after a rejected record, and so does :class:`~negotiate_stream._context.SecurityContext` - the
    split keeps that behaviour (with ESS the two directions share no key, RC4 state or counter).
    """

    outgoing: NTLMRecordCipher
    incoming: NTLMRecordCipher


class _GiveBack:
    """Stands in for an ARC4 encryptor whose next keystream bytes a probe has read: serves them again, then leaves.

    RC4 cannot be rewound and cryptography's state cannot be copied, but the probe encrypted zeros, so it *is* the
    keystream the handle would have used next. The first ``len(keystream)`` bytes pyspnego encrypts are XORed with
    it here; after that the real encryptor continues, and the stand-in puts it back in the owner's slot.
    """

    __slots__ = ("_keystream", "_owner", "_stream")

    def __init__(self, owner: Any, stream: Any, keystream: bytes) -> None:
        self._owner = owner
        self._stream = stream
        self._keystream = keystream

    def update(self, data: Buffer) -> bytes:
        """Encrypt ``data`` exactly as the handle would have without the probe."""
        keystream = self._keystream
        size = min(len(data), len(keystream))
        head = (int.from_bytes(data[:size], "big") ^ int.from_bytes(keystream[:size], "big")).to_bytes(size, "big")
        self._keystream = keystream[size:]
        if not self._keystream:  # the probe is given back in full: the real encryptor takes its slot again
            self._owner._handle = self._stream
        tail: bytes = self._stream.update(data[size:])
        return head + tail


def _find_in_keystream(probe: bytes, seal_key: bytes, limit: int) -> int | None:
    """Where ``probe`` starts in the keystream of ``seal_key``, searching positions 0 to ``limit``; else ``None``.

    The keystream is generated in growing pieces: the expected position is 0, so the common case costs one
    64-byte piece rather than the whole window.
    """
    generate = arc4(seal_key)
    keystream = bytearray()
    piece = 64
    while len(keystream) < limit + _PROBE:
        start = max(0, len(keystream) - _PROBE + 1)  # a match may straddle the previous piece's end
        keystream += generate(bytes(min(piece, limit + _PROBE - len(keystream))))
        position = keystream.find(probe, start)
        if position >= 0:
            return position
        piece *= 4
    return None


def _keystream_position(handle: Any, seal_key: bytes, limit: int) -> int | None:
    """How many keystream bytes pyspnego's RC4 ``handle`` has used since it was keyed; the handle is left as it was.

    The handle's encryptor encrypts ``_PROBE`` zero bytes (revealing its keystream at its current position), which
    are looked up in a fresh keystream of the same key; a :class:`_GiveBack` then serves the probed keystream again,
    found or not, so pyspnego's next record is what it would have been without the measurement.
    """
    probe = handle._handle.update(bytes(_PROBE))
    # Read the slot again: a stand-in left by an earlier measurement has just served its bytes and stepped aside.
    handle._handle = _GiveBack(handle, handle._handle, probe)
    return _find_in_keystream(probe, seal_key, limit)


def ntlm_record_state(ctx: spnego.ContextProxy, *, search_limit: int = SEARCH_LIMIT) -> NTLMRecordState | None:
    """The record state of a complete pyspnego NTLM context (raw or under SPNEGO) as plain values, or ``None``.

    ``None`` when the context is not pyspnego's own NTLM, not complete, lacks one of the private attributes listed
    in the module docstring or has them in another shape, negotiated flags
    :func:`~negotiate_stream._ntlm_records.covers` refuses (e.g. no ESS: one RC4 state for both directions), keys
    that differ from :func:`~negotiate_stream._ntlm_records.derive_keys`, or a keystream position beyond
    ``search_limit``. Either way pyspnego's context is left usable and in step: nothing is written but the
    give-back stand-in of :func:`_keystream_position`.
    """
    inner = mechanism(ctx)
    if not isinstance(inner, NTLMProxy) or not inner.complete:
        return None
    try:
        flags = int(inner._context_attr)
        counters = vars(inner)
        seq_out, seq_in = int(counters[_SEQ_OUT]), int(counters[_SEQ_IN])
        handle_out, handle_in = inner._handle_out, inner._handle_in
        if handle_out is None or handle_in is None:
            return None
        pyspnego_keys = (inner._sign_key_out, inner._sign_key_in, handle_out._key, handle_in._key)
        streams = (handle_out._handle, handle_in._handle)
        session_key = bytes(inner.session_key)
        initiator = inner.usage == "initiate"
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if handle_out is handle_in or not all(callable(getattr(stream, "update", None)) for stream in streams):
        return None  # one shared RC4 state (no ESS), or an encryptor this module does not know how to probe
    if not covers(flags) or tuple(derive_keys(session_key, flags, initiator=initiator)) != pyspnego_keys:
        return None  # checked before any probe: a refusal here has touched nothing
    keystream_out = _keystream_position(handle_out, pyspnego_keys[2], search_limit)
    keystream_in = _keystream_position(handle_in, pyspnego_keys[3], search_limit)
    if keystream_out is None or keystream_in is None:
        return None
    return NTLMRecordState(
        session_key=session_key,
        flags=flags,
        initiator=initiator,
        seq_out=seq_out,
        seq_in=seq_in,
        keystream_out=keystream_out,
        keystream_in=keystream_in,
    )


def take_over(ctx: spnego.ContextProxy) -> NTLMFastPath | None:
    """Move the records of a complete NTLM context from pyspnego to our cipher; ``None`` keeps pyspnego.

    ``None`` when the switch is off (:func:`fast_path_enabled`) or :func:`ntlm_record_state` refuses the context.
    On success pyspnego's RC4 handles are detached (see the module docstring): from now on the returned ciphers
    are the only record state of this context, so every record (and every out-of-stream wrap) must go through them.
    """
    if not fast_path_enabled():
        return None
    state = ntlm_record_state(ctx)
    if state is None:
        return None
    # One direction each: the outgoing cipher never needs the incoming RC4/HMAC states, nor the other way round.
    outgoing = NTLMRecordCipher.create(state, direction="out")
    incoming = NTLMRecordCipher.create(state, direction="in")
    if outgoing is None or incoming is None:  # e.g. a session key that is not 16 bytes; the probes were given back
        return None
    inner = mechanism(ctx)
    for handle in (inner._handle_out, inner._handle_in):
        # The give-back stand-in and its handle refer to each other: break that cycle so pyspnego's RC4 states
        # (and the probed keystream) are freed now rather than at the next cyclic garbage collection.
        handle._handle = None
    inner._handle_out = inner._handle_in = None
    return NTLMFastPath(outgoing=outgoing, incoming=incoming)
