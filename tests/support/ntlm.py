"""NTLM helpers for the record fast-path tests: real pyspnego contexts, handshaken outside SecurityContext.

The read-out of pyspnego's record state lives in the library (:func:`negotiate_stream._spnego.ntlm_takeover.
ntlm_record_state`, the pyspnego border) and is re-exported here for the tests that pair it with these contexts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import spnego
from spnego._context import GSSMech
from spnego._ntlm import NTLMProxy

from negotiate_stream._spnego.environment import environment
from negotiate_stream._spnego.ntlm_takeover import ntlm_record_state
from negotiate_stream.testing import NTLMUsers

__all__ = ["handshaken_pair", "ntlm_record_state"]


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
