"""PROXY protocol version 2 (HAProxy's ``proxy-protocol.txt``, section 2.2): the header ``serve --forward
--proxy-protocol v2`` writes to the service before any data, so the service learns who the client is.

Pure encoder, no I/O::

    +--------------------------------+---------+--------+------------+----------------------+----------+
    | signature (12 bytes)           | ver/cmd | family | length     | addresses and ports  | TLVs ... |
    | \\r\\n\\r\\n\\0\\r\\nQUIT\\n       | 0x21    | 0x11   | uint16 BE  | IPv4: 4+4+2+2 bytes  |          |
    |                                |         | 0x21   | (the rest) | IPv6: 16+16+2+2      |          |
    +--------------------------------+---------+--------+------------+----------------------+----------+

    ver/cmd 0x21: version 2, command PROXY. family 0x11: TCP over IPv4, 0x21: TCP over IPv6. Addresses then
    ports, source (the client) first, all big-endian. Each TLV: type (1 byte), length (uint16 BE), value.

The gateway's two TLVs use the range the specification leaves to applications (0xE0-0xEF):
:data:`PP2_TYPE_IDENTITY` (0xE0), the authenticated identity in UTF-8, and :data:`PP2_TYPE_PROTOCOL` (0xE1),
``ntlm`` or ``kerberos``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

__all__ = ["PP2_TYPE_IDENTITY", "PP2_TYPE_PROTOCOL", "SIGNATURE", "encode_v2", "gateway_header"]

#: The 12 bytes every version 2 header starts with (chosen by the specification to never start valid v1 or HTTP).
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: TLV type of the client's authenticated identity (``DOMAIN\\user`` or ``user@REALM``), UTF-8.
PP2_TYPE_IDENTITY = 0xE0
#: TLV type of the authentication protocol the client used, ``ntlm`` or ``kerberos`` (ASCII).
PP2_TYPE_PROTOCOL = 0xE1

_VERSION_2_PROXY = 0x21
_TCP_OVER_IPV4 = 0x11
_TCP_OVER_IPV6 = 0x21
_HEADER = struct.Struct(">12sBBH")
_TLV_HEADER = struct.Struct(">BH")
_PORTS = struct.Struct(">HH")
_MAX_LENGTH = 0xFFFF

Address = tuple[str, int]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.partition("%")[0])  # a link-local IPv6 peer may carry "%scope"
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the service expects to see them as IPv4.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def encode_v2(source: Address, destination: Address, tlvs: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """A PROXY v2 header (command PROXY, TCP) for a connection from ``source`` to ``destination`` (``(host, port)``
    with an IP literal), followed by ``tlvs`` (type, value) in order.

    Both addresses are written as IPv4 when both are IPv4 (or IPv4-mapped IPv6), else as IPv6. Raises
    :class:`ValueError` for a host that is not an IP address, or a header longer than the 16-bit length allows.
    """
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version == dst.version == 4:
        family = _TCP_OVER_IPV4
        addresses = src.packed + dst.packed
    else:
        family = _TCP_OVER_IPV6
        addresses = b"".join(
            (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed for ip in (src, dst)
        )
    body = bytearray(addresses + _PORTS.pack(source[1], destination[1]))
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > _MAX_LENGTH:
            raise ValueError(f"TLV type {kind} with {len(value)} bytes: the type is one byte, the length two")
        body += _TLV_HEADER.pack(kind, len(value)) + value
    if len(body) > _MAX_LENGTH:
        raise ValueError(f"PROXY v2 header body of {len(body)} bytes exceeds the 16-bit length field")
    return _HEADER.pack(SIGNATURE, _VERSION_2_PROXY, family, len(body)) + bytes(body)


def gateway_header(source: Address, destination: Address, identity: str | None, protocol: str | None) -> bytes:
    """The header ``serve --proxy-protocol v2`` sends: the client's ``source`` and the ``destination`` it connected
    to, then its ``identity`` (TLV 0xE0) and ``protocol`` (TLV 0xE1), each left out when unknown."""
    tlvs: list[tuple[int, bytes]] = []
    if identity is not None:
        tlvs.append((PP2_TYPE_IDENTITY, identity.encode("utf-8")))
    if protocol is not None:
        tlvs.append((PP2_TYPE_PROTOCOL, protocol.encode("ascii")))
    return encode_v2(source, destination, tlvs)
