"""RFC 4752 security-layer negotiation for the SASL ``GSSAPI`` mechanism (LDAP, IMAP, XMPP... over Kerberos).

After the Kerberos context is established by the SASL exchange, the server sends one more challenge: a wrapped
4-byte message offering security layers (none / integrity / confidentiality) and its maximum buffer size; the
client answers with one chosen layer, its own maximum buffer and an optional authorization identity. Both
messages are GSS wrap tokens without confidentiality. From then on every SASL buffer is protected at the chosen
layer, which :func:`connection` turns into a :class:`~negotiate_stream.Connection` with SASL framing::

    context = SecurityContext.client(protocol="kerberos", target="ldap/dc.example.com")
    ...                                         # SASL bind steps: context.step(server_token) until complete
    reply, layer = client_reply(context, server_last_challenge)
    ...                                         # send reply as the last SASL response
    conn = connection(context, layer)           # conn.send(...) / conn.receive_data(...) from here on

``GSS-SPNEGO`` (what Windows and Samba use with NTLM) has no such negotiation: use
``Connection(context, framing="sasl")`` directly; the layer follows the context flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._connection import Connection
from ._context import ProtectionLevel, SecurityContext
from ._framing.sasl import DEFAULT_MAX_BUFFER, LayerOffer, SecurityLayer, decode_layer_message, encode_layer_message
from .errors import FramingError, ProtectionLevelError

__all__ = [
    "NegotiatedLayer",
    "SecurityLayer",
    "client_reply",
    "connection",
    "server_accept",
    "server_offer",
    "supported_layers",
]

_LEVELS = {
    SecurityLayer.NONE: ProtectionLevel.NONE,
    SecurityLayer.INTEGRITY: ProtectionLevel.SIGN,
    SecurityLayer.CONFIDENTIALITY: ProtectionLevel.ENCRYPT_AND_SIGN,
}
# Strongest first: what a client picks by default.
_PREFERENCE = (SecurityLayer.CONFIDENTIALITY, SecurityLayer.INTEGRITY, SecurityLayer.NONE)


@dataclass(frozen=True)
class NegotiatedLayer:
    """The outcome of the RFC 4752 negotiation, as seen by one side."""

    #: The one layer both sides use from now on.
    layer: SecurityLayer
    #: The largest SASL buffer the peer accepts (0 when the layer is NONE).
    peer_max_buffer: int
    #: The authorization identity the client asked for (``b""``: the authenticated identity itself).
    authzid: bytes = b""

    @property
    def protection_level(self) -> ProtectionLevel:
        """The :class:`ProtectionLevel` equivalent of :attr:`layer`."""
        return _LEVELS[self.layer]


def supported_layers(context: SecurityContext) -> SecurityLayer:
    """The layers the established ``context`` can provide at or above its required protection level."""
    negotiated = context.protection_level.rank
    required = context.required_protection_level.rank
    layers = SecurityLayer(0)
    for layer, level in _LEVELS.items():
        if required <= level.rank <= negotiated:
            layers |= layer
    return layers


def server_offer(
    context: SecurityContext, *, layers: SecurityLayer | None = None, max_buffer: int = DEFAULT_MAX_BUFFER
) -> bytes:
    """Return the server's last challenge: the wrapped offer of ``layers`` (default :func:`supported_layers`).

    Send it to the client after the context completes, then pass the client's answer to :func:`server_accept`
    with the same ``layers``. Raises :class:`ProtectionLevelError` if no offered layer is usable.
    """
    offered = supported_layers(context) if layers is None else layers & supported_layers(context)
    if not offered:
        raise ProtectionLevelError(
            "no SASL security layer satisfies both the negotiated and the required protection level"
        )
    size = 0 if offered == SecurityLayer.NONE else max_buffer
    return context.wrap_message(encode_layer_message(LayerOffer(offered, size)))


def client_reply(
    context: SecurityContext,
    challenge: bytes,
    *,
    layer: SecurityLayer | None = None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    authzid: bytes = b"",
) -> tuple[bytes, NegotiatedLayer]:
    """Answer the server's layer offer ``challenge``; return the wrapped reply to send and the agreed layer.

    The client picks ``layer`` if given, else the strongest layer that the server offers and the context can
    provide. The context switches to that layer's protection level at once (:meth:`select_protection_level`).
    Raises :class:`ProtectionLevelError` if no acceptable layer is offered, :class:`FramingError` or
    :class:`IntegrityError` if the challenge is malformed or forged.
    """
    offer = decode_layer_message(context.unwrap_message(challenge))
    usable = offer.layers & supported_layers(context)
    candidates = [layer] if layer is not None else list(_PREFERENCE)
    chosen = next((candidate for candidate in candidates if candidate in usable), None)
    if chosen is None:
        raise ProtectionLevelError(
            f"the server offers SASL security layers {offer.layers!r}, this side can use {usable!r}"
            f"{f' and asked for {layer!r}' if layer is not None else ''}: configure a common protection level"
        )
    context.select_protection_level(_LEVELS[chosen])
    size = 0 if chosen == SecurityLayer.NONE else max_buffer
    reply = context.wrap_message(encode_layer_message(LayerOffer(chosen, size, authzid)))
    return reply, NegotiatedLayer(chosen, offer.max_buffer, authzid)


def server_accept(context: SecurityContext, response: bytes, *, layers: SecurityLayer | None = None) -> NegotiatedLayer:
    """Check the client's answer to :func:`server_offer` (same ``layers``) and switch to the chosen layer.

    Raises :class:`FramingError` if the answer does not choose exactly one layer, :class:`ProtectionLevelError`
    if it chose a layer that was not offered, :class:`IntegrityError` if it is forged.
    """
    offered = supported_layers(context) if layers is None else layers & supported_layers(context)
    answer = decode_layer_message(context.unwrap_message(response))
    if answer.layers not in _LEVELS:
        raise FramingError(f"the SASL client chose several security layers at once ({answer.layers!r})")
    if not answer.layers & offered:
        raise ProtectionLevelError(f"the SASL client chose {answer.layers!r}, which was not offered ({offered!r})")
    context.select_protection_level(_LEVELS[answer.layers])
    return NegotiatedLayer(answer.layers, answer.max_buffer, answer.authzid)


def connection(
    context: SecurityContext, negotiated: NegotiatedLayer, *, max_buffer: int = DEFAULT_MAX_BUFFER
) -> Connection:
    """A :class:`Connection` speaking SASL security-layer records at the negotiated layer.

    ``max_buffer`` must be what this side advertised; records to the peer stay within its maximum buffer.
    """
    peer_max = negotiated.peer_max_buffer or DEFAULT_MAX_BUFFER
    return Connection(context, framing="sasl", sasl_max_buffer=max_buffer, sasl_peer_max_buffer=peer_max)
