"""NTLM helpers for the record fast-path tests: real pyspnego contexts and the read-out of their record state.

:func:`ntlm_record_state` is the one place that reads pyspnego's private NTLM attributes; it is written so that it
can move, unchanged, into the context module (the pyspnego border) when the fast path is wired in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import spnego
from spnego._context import GSSMech
from spnego._ntlm import NTLMProxy

from negotiate_stream._ntlm_records import NTLMRecordState, arc4, covers, derive_keys
from negotiate_stream._spnego.environment import environment
from negotiate_stream._spnego.records import mechanism
from negotiate_stream.testing import NTLMUsers

__all__ = ["handshaken_pair", "ntlm_record_state"]

_PROBE = 16  # keystream bytes read to locate a position: a false match has probability ~ limit / 2**128


def _keystream_position(handle: Any, seal_key: bytes, limit: int) -> int | None:
    """How many keystream bytes pyspnego's RC4 handle has used since it was keyed; the handle is left as it was.

    cryptography's ARC4 state cannot be read or copied, so the handle encrypts ``_PROBE`` zero bytes (revealing
    its keystream at its current position), the probe is looked up in a fresh keystream of the same key, and the
    handle is rebuilt from its key (``reset()``) and advanced to the position found. If the position lies beyond
    ``limit`` the handle is lost (``None``): call this right after the handshake, before records go through
    pyspnego in volume.
    """
    probe = handle.update(bytes(_PROBE))
    fresh = arc4(seal_key)(bytes(limit + _PROBE))
    position = fresh.find(probe)
    if position < 0:
        return None
    handle.reset()
    if position:
        handle.update(bytes(position))
    return position


def ntlm_record_state(ctx: spnego.ContextProxy, *, search_limit: int = 65536) -> NTLMRecordState | None:
    """The record state of a complete pyspnego NTLM context (raw or under SPNEGO) as plain values, or ``None``.

    ``None`` when the context is not pyspnego's own NTLM (Kerberos, SSPI), not complete, lacks one of the private
    attributes this reads (another pyspnego version), negotiated flags :func:`covers` refuses (e.g. no ESS), or
    when pyspnego's signing/sealing keys differ from :func:`derive_keys` - in all these cases the caller keeps
    using pyspnego and nothing was touched. Read from pyspnego 0.12: ``_context_attr`` (negotiated flags), the
    name-mangled ``__seq_num_out`` / ``__seq_num_in`` counters, ``_sign_key_out/_in`` and the RC4 handles
    ``_handle_out/_in`` (whose ``_key`` is the sealing key). The keystream positions are measured (see
    :func:`_keystream_position`) rather than assumed, and both handles are restored afterwards, so pyspnego's
    context stays usable either way - unless a position lies beyond ``search_limit`` (only after that much data
    went through pyspnego's records): then ``None`` comes back with that context's RC4 state lost.
    """
    inner = mechanism(ctx)
    if not isinstance(inner, NTLMProxy) or not inner.complete:
        return None
    try:
        flags = int(inner._context_attr)
        counters = vars(inner)  # the two counters are name-mangled private attributes of NTLMProxy
        seq_out, seq_in = int(counters["_NTLMProxy__seq_num_out"]), int(counters["_NTLMProxy__seq_num_in"])
        handle_out, handle_in = inner._handle_out, inner._handle_in
        if handle_out is None or handle_in is None:
            return None
        pyspnego_keys = (inner._sign_key_out, inner._sign_key_in, handle_out._key, handle_in._key)
        if not all(callable(getattr(h, name, None)) for h in (handle_out, handle_in) for name in ("update", "reset")):
            return None
    except (AttributeError, KeyError):
        return None
    session_key = inner.session_key
    initiator = inner.usage == "initiate"
    if not covers(flags) or tuple(derive_keys(session_key, flags, initiator=initiator)) != pyspnego_keys:
        return None
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


@contextmanager
def _lm_compat_level(level: int | None) -> Iterator[None]:
    with environment("LM_COMPAT_LEVEL", None if level is None else str(level)):
        yield


def handshaken_pair(
    users: NTLMUsers,
    protocol: str = "ntlm",
    *,
    clear_flags: int = 0,
    lm_compat_level: int | None = None,
    context_req: spnego.ContextReq = spnego.ContextReq.default,
) -> tuple[spnego.ContextProxy, spnego.ContextProxy]:
    """A pyspnego ``(client, server)`` pair for ``protocol`` ("ntlm" or "negotiate"), handshake complete.

    ``clear_flags`` removes NegotiateFlags from the client's NEGOTIATE_MESSAGE (pyspnego's acceptor echoes what
    the client offers), e.g. KEY_EXCH or NEGOTIATE_128/56 to get the other key sizes. ``lm_compat_level`` sets
    ``$LM_COMPAT_LEVEL`` while the client is built (0: NTLMv1 without ESS, 1-2: NTLMv1 with ESS).
    """
    creds = users.client_credentials()
    username = f"{creds.domain}\\{creds.username}"
    with ExitStack() as stack:
        stack.enter_context(_lm_compat_level(lm_compat_level))
        stack.enter_context(environment("NTLM_USER_FILE", users.path))
        ntlm = NTLMProxy(username, creds.password, hostname="server", service="host", context_req=context_req)
        ntlm._context_req &= ~clear_flags
        if protocol == "ntlm":
            client: spnego.ContextProxy = ntlm
        else:
            ntlm._is_wrapped = True
            client = spnego.client(
                username,
                creds.password,
                hostname="server",
                service="host",
                context_req=context_req,
                protocol="negotiate",
                _negotiate_contexts={GSSMech.ntlm: ntlm},
            )
        server = spnego.server(hostname="server", service="host", context_req=context_req, protocol=protocol)
        token = client.step()
        while token is not None:
            token = server.step(token)
            if token is None:
                break
            token = client.step(token)
    assert client.complete and server.complete
    return client, server
