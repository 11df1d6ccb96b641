"""The acceptor's extended protection: channel-binding policy and allowed service names (part of the pyspnego
border, see :mod:`.._spnego`).

.NET's ``ExtendedProtectionPolicy`` has a ``PolicyEnforcement`` (Never / WhenSupported / Always) and a
``ServiceNameCollection``; :class:`AcceptorPolicy` is the same for one acceptor context:

- :meth:`AcceptorPolicy.bindings_for` gives the channel bindings to hand pyspnego at each acceptor step. The
  pyspnego context is created without any, because its NTLM acceptor knows one rule only (refuse a client without
  bindings); under ``"when_supported"`` and ``"always"`` NTLM bindings are compared here instead, and Kerberos
  bindings are still checked by MIT Kerberos, which accepts an initiator that sent none.
- :meth:`AcceptorPolicy.enforce` runs once the context is complete, after pyspnego verified the client's token (the
  NTLM AV pairs are covered by its NTProofStr, the Kerberos facts come from the verified ticket), and raises
  :class:`~negotiate_stream.errors.ChannelBindingError` or :class:`~negotiate_stream.errors.ServiceNameError`.

The default policy, ``"mechanism"``, hands pyspnego the bindings at every step, exactly as the library always did:
pyspnego's NTLM acceptor refuses a client that sent no MsvAvChannelBindings (it accepts the all-zero value), MIT
Kerberos accepts one that sent none; both refuse wrong bindings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import spnego
from spnego._spnego import unpack_token
from spnego.channel_bindings import GssChannelBindings

from .._options import CHANNEL_BINDING_POLICIES, ChannelBindingPolicy
from ..errors import ChannelBindingError, ServiceNameError
from .ntlm_authenticate import NTLM_AUTHENTICATE_PREFIX, NTLMAuthenticate, parse_authenticate
from .records import mechanism

__all__ = ["AcceptorPolicy", "gss_context", "ntlm_authenticate_in", "spn_allowed"]

_GSS_C_CHANNEL_BOUND_FLAG = 0x800  # MIT Kerberos 1.19+: the initiator's bindings were present and verified
_SPNEGO_NEG_TOKEN_RESP = 0xA1


def gss_context(ctx: spnego.ContextProxy) -> Any:
    """The python-gssapi context under a pyspnego Kerberos context (also inside SPNEGO), else ``None``."""
    try:
        raw = getattr(mechanism(ctx), "_context", None)
    except Exception:  # SPNEGO has not chosen a mechanism yet
        return None
    return raw if hasattr(raw, "actual_flags") else None


def ntlm_authenticate_in(token: bytes | None) -> bytes | None:
    """The NTLM AUTHENTICATE message ``token`` is or carries (in a SPNEGO NegTokenResp), else ``None``.

    The SPNEGO token is unpacked by pyspnego's own parser, so these are the bytes its acceptor verifies.
    """
    if not token:
        return None
    if token.startswith(NTLM_AUTHENTICATE_PREFIX):
        return token
    if token[0] != _SPNEGO_NEG_TOKEN_RESP:
        return None
    try:
        inner = getattr(unpack_token(token), "response_token", None)
    except Exception:  # not SPNEGO after all: pyspnego's step reports it
        return None
    return inner if isinstance(inner, bytes) and inner.startswith(NTLM_AUTHENTICATE_PREFIX) else None


def _spn_parts(name: str) -> tuple[str, str | None]:
    """``"HTTP/Web.Example.COM@REALM"`` -> ``("http/web.example.com", "realm")``; ``"HTTP@web"`` -> ``"http/web"``.

    Service names compare case-insensitively, as in Windows and .NET's ServiceNameCollection.
    """
    if "/" not in name:  # the GSSAPI host-based form service@host, or a bare name
        return name.replace("@", "/", 1).lower(), None
    base, _, realm = name.partition("@")
    return base.lower(), realm.lower() or None


def spn_allowed(spn: str, allowed: Collection[str]) -> bool:
    """True when ``spn`` is one of ``allowed`` (case-insensitive; an allowed name without a realm fits any realm)."""
    name, realm = _spn_parts(spn)
    for entry in allowed:
        entry_name, entry_realm = _spn_parts(entry)
        if entry_name == name and (entry_realm is None or realm is None or entry_realm == realm):
            return True
    return False


class AcceptorPolicy:
    """One acceptor's extended-protection policy; see the module docstring."""

    def __init__(
        self,
        policy: ChannelBindingPolicy,
        channel_bindings: bytes | None,
        allowed_spns: Collection[str] | None,
    ) -> None:
        if policy not in CHANNEL_BINDING_POLICIES:
            raise ValueError(
                f"unknown channel_binding_policy {policy!r}: use 'mechanism', 'never', 'when_supported' or 'always'"
            )
        if isinstance(allowed_spns, str):  # one name passed without its list would match letter by letter
            raise TypeError("allowed_spns must be a collection of service names, not one string")
        if policy == "always" and channel_bindings is None and not allowed_spns:
            raise ValueError("channel_binding_policy='always' needs channel_bindings or allowed_spns to enforce")
        self.policy = policy
        self.allowed_spns = tuple(allowed_spns) if allowed_spns is not None else None
        self._bindings = GssChannelBindings(application_data=channel_bindings) if channel_bindings is not None else None
        #: The client's AUTHENTICATE message, once an NTLM one went through :meth:`bindings_for`.
        self.ntlm: NTLMAuthenticate | None = None

    def bindings_for(self, token: bytes | None) -> GssChannelBindings | None:
        """The channel bindings to give pyspnego's acceptor for this step's ``token``."""
        message = ntlm_authenticate_in(token)
        if message is not None:
            try:
                self.ntlm = parse_authenticate(message)
            except ValueError:
                # pyspnego refuses a malformed message; one it accepts anyway reads as "no bindings, no target",
                # which the policy then treats like a client that sent none.
                self.ntlm = None
        if self.policy == "never" or (message is not None and self.policy != "mechanism"):
            return None
        return self._bindings

    def enforce(self, ctx: spnego.ContextProxy, protocol: str | None) -> None:
        """Check the complete context against the policy; raise the typed refusal if it fails."""
        if self.policy == "never":
            return
        kerberos = gss_context(ctx) if protocol == "kerberos" else None
        if self._bindings is not None and self.policy != "mechanism":
            if protocol == "ntlm":
                self._check_ntlm_bindings(self._bindings)
            elif self.policy == "always" and not (kerberos is not None and _bound(kerberos)):
                raise ChannelBindingError(
                    "the Kerberos client sent no channel bindings and channel_binding_policy is 'always': it must "
                    "bind its authentication to this TLS channel (or use 'when_supported' to let it in)"
                )
        if self.allowed_spns is not None:
            target = self.ntlm.target_name if protocol == "ntlm" and self.ntlm else None
            if kerberos is not None:
                target = str(kerberos.target_name) if kerberos.target_name is not None else None
            self._check_spn(target, self.allowed_spns)

    def _check_ntlm_bindings(self, bindings: GssChannelBindings) -> None:
        sent = self.ntlm.channel_bindings if self.ntlm is not None else None
        if sent is not None and any(sent):
            if sent != hashlib.md5(bindings.pack(), usedforsecurity=False).digest():  # MS-NLMP 3.1.5.1.2
                raise ChannelBindingError(
                    "channel bindings do not match: the TLS channel seen by the client is not ours (possible "
                    "man-in-the-middle)"
                )
        elif self.policy == "always":
            raise ChannelBindingError(
                "the NTLM client sent no channel bindings and channel_binding_policy is 'always': it must bind its "
                "authentication to this TLS channel (or use 'when_supported' to let it in)"
            )

    def _check_spn(self, target: str | None, allowed: tuple[str, ...]) -> None:
        if target is None:
            if self.policy == "always":
                raise ServiceNameError(
                    "the client did not say which service it authenticated for (no NTLM MsvAvTargetName) and "
                    "channel_binding_policy is 'always'"
                )
            return
        if not spn_allowed(target, allowed):
            raise ServiceNameError(
                f"the client authenticated for service {target!r}, which is not one of this server's allowed_spns "
                f"{list(allowed)!r}: connect with a target (SPN) this server answers to"
            )


def _bound(kerberos: Any) -> bool:
    return bool(int(kerberos.actual_flags) & _GSS_C_CHANNEL_BOUND_FLAG)
