#!/usr/bin/env python3
"""LDAP search over a sealed SASL GSS-SPNEGO bind, protected by negotiate_stream's SASL framing.

The bind (NTLM, Kerberos or SPNEGO) is driven with :class:`SecurityContext.step`; after it every LDAP message
goes through ``Connection(context, framing="sasl")``: a 4-byte big-endian length + a wrap token per buffer,
which is what Active Directory (and Samba) require once a SASL bind negotiated signing or sealing. One sealed
buffer may carry several LDAP messages (Samba sends a SearchResultEntry and the SearchResultDone together), so
replies are parsed from the decrypted byte stream, never one per buffer.

    eval "$(scripts/interop/samba-dc start --user bob)"
    python examples/ldap_sealed_search.py --mech ntlm
    python examples/ldap_sealed_search.py --mech kerberos
    python examples/ldap_sealed_search.py --mech negotiate --user bob --password "$SAMBA_DC_USER_PASSWORD"
    scripts/interop/samba-dc stop --clean

Defaults come from the ``SAMBA_DC_*`` variables printed by ``samba-dc``. The LDAP messages are hand-encoded BER
(the few shapes needed). Exit status 0 when the bind and the search succeed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Iterator

from negotiate_stream._connection import NEED_DATA, Connection, Data, EndOfStream
from negotiate_stream._context import Credentials, SecurityContext

SASL_BIND_IN_PROGRESS = 14

# -- just enough BER ---------------------------------------------------------------------------------------------


def ber_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    encoded = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + ber_length(len(value)) + value


def integer(tag: int, value: int) -> bytes:
    return tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def octets(value: str | bytes, tag: int = 0x04) -> bytes:
    return tlv(tag, value.encode() if isinstance(value, str) else value)


def read_tlv(buffer: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: (tag, value, position after it)."""
    tag, size = buffer[pos], buffer[pos + 1]
    pos += 2
    if size & 0x80:
        width = size & 0x7F
        size = int.from_bytes(buffer[pos : pos + width], "big")
        pos += width
    return tag, buffer[pos : pos + size], pos + size


def children(value: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(value):
        tag, inner, pos = read_tlv(value, pos)
        yield tag, inner


def complete_message_length(buffer: bytes | bytearray) -> int:
    """Length of the first LDAP message in ``buffer`` if it is all there, else 0."""
    if len(buffer) < 2:
        return 0
    size, header = buffer[1], 2
    if size & 0x80:
        width = size & 0x7F
        if len(buffer) < 2 + width:
            return 0
        size, header = int.from_bytes(buffer[2 : 2 + width], "big"), 2 + width
    return header + size if len(buffer) >= header + size else 0


def ldap_message(message_id: int, operation: bytes) -> bytes:
    return tlv(0x30, integer(0x02, message_id) + operation)


def bind_request(token: bytes) -> bytes:
    credentials = octets("GSS-SPNEGO") + octets(token)
    return tlv(0x60, integer(0x02, 3) + octets("") + tlv(0xA3, credentials))


def search_request(base: str, object_class: str, attributes: list[str]) -> bytes:
    match = tlv(0xA3, octets("objectClass") + octets(object_class))  # equalityMatch
    return tlv(
        0x63,
        octets(base)
        + integer(0x0A, 2)  # wholeSubtree
        + integer(0x0A, 0)  # neverDerefAliases
        + integer(0x02, 100)  # sizeLimit
        + integer(0x02, 30)  # timeLimit
        + tlv(0x01, b"\x00")  # typesOnly false
        + match
        + tlv(0x30, b"".join(octets(name) for name in attributes)),
    )


def split_message(pdu: bytes) -> tuple[int, int, bytes]:
    """LDAPMessage -> (message id, protocolOp tag, protocolOp value)."""
    tag, body, _ = read_tlv(pdu)
    if tag != 0x30:
        raise ValueError(f"not an LDAPMessage (tag 0x{tag:02x})")
    parts = list(children(body))
    return int.from_bytes(parts[0][1], "big"), parts[1][0], parts[1][1]


def ldap_result(value: bytes) -> tuple[int, str, dict[int, bytes]]:
    """LDAPResult -> (resultCode, diagnosticMessage, {tag: value} of the optional fields)."""
    parts = list(children(value))
    return int.from_bytes(parts[0][1], "big"), parts[2][1].decode(errors="replace"), dict(parts[3:])


# -- the LDAP client --------------------------------------------------------------------------------------------


class LdapClient:
    """Plain LDAP until :meth:`start_security_layer`, then every message through the SASL Connection."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.create_connection((address, port), timeout=30)
        self.received = bytearray()  # plaintext LDAP bytes not yet parsed
        self.message_id = 0
        self.connection: Connection | None = None
        #: How many LDAP messages each sealed buffer carried (evidence for the several-per-buffer case).
        self.messages_per_record: list[int] = []

    def send(self, operation: bytes) -> None:
        self.message_id += 1
        pdu = ldap_message(self.message_id, operation)
        self.sock.sendall(pdu if self.connection is None else self.connection.send(pdu))

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if self.connection is None:
            if not chunk:
                raise ConnectionError("the LDAP server closed the connection")
            self.received += chunk
            return
        self.connection.receive_data(chunk)
        while (event := self.connection.next_event()) is not NEED_DATA:
            if isinstance(event, Data):
                before = self._count_complete()
                self.received += event.data
                self.messages_per_record.append(self._count_complete() - before)
            elif isinstance(event, EndOfStream):
                raise ConnectionError("the LDAP server closed the connection")

    def _count_complete(self) -> int:
        count, pos, view = 0, 0, bytes(self.received)
        while size := complete_message_length(view[pos:]):
            count, pos = count + 1, pos + size
        return count

    def receive(self) -> tuple[int, int, bytes]:
        """The next LDAP message: (message id, operation tag, operation value)."""
        while not (size := complete_message_length(self.received)):
            self._receive()
        pdu = bytes(self.received[:size])
        del self.received[:size]
        return split_message(pdu)

    def sasl_bind(self, context: SecurityContext) -> None:
        token = context.step(None)
        while True:
            if token is None:
                raise RuntimeError("the server wants another bind round but the client has no token")
            self.send(bind_request(token))
            _, tag, value = self.receive()
            if tag != 0x61:
                raise RuntimeError(f"expected a BindResponse, got tag 0x{tag:02x}")
            code, message, extra = ldap_result(value)
            if code not in (0, SASL_BIND_IN_PROGRESS):
                raise RuntimeError(f"bind failed: resultCode {code}: {message}")
            server_token = extra.get(0x87)  # serverSaslCreds: CHALLENGE, AP-REP or the final mechListMIC
            token = context.step(server_token) if server_token and not context.complete else None
            if code == 0:
                if not context.complete:
                    raise RuntimeError("the server says success but the security context is not complete")
                return

    def start_security_layer(self, context: SecurityContext) -> None:
        # GSS-SPNEGO has no RFC 4752 layer negotiation: the layer follows the context flags.
        self.connection = Connection(context, framing="sasl")
        self.connection.next_event()  # HandshakeComplete: the context was established by the bind

    def close(self) -> None:
        self.send(tlv(0x42, b""))  # UnbindRequest
        self.sock.close()


def main() -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mech", choices=["ntlm", "kerberos", "negotiate"], default="negotiate")
    parser.add_argument("--address", default=env("SAMBA_DC_ADDRESS", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("SAMBA_DC_LDAP_PORT", "389")))
    parser.add_argument("--host", default=env("SAMBA_DC_HOST", "dc1.samdom.test"), help="SPN is ldap/HOST")
    parser.add_argument("--base", default=env("SAMBA_DC_BASE_DN", "DC=samdom,DC=test"))
    parser.add_argument("--user", default=env("SAMBA_DC_ADMIN", "Administrator"))
    parser.add_argument("--password", default=env("SAMBA_DC_ADMIN_PASSWORD"))
    parser.add_argument("--domain", default=env("SAMBA_DC_DOMAIN", "SAMDOM"), help="NetBIOS domain (NTLM)")
    parser.add_argument("--realm", default=env("SAMBA_DC_REALM", "SAMDOM.TEST"), help="Kerberos realm")
    parser.add_argument("--ccache", action="store_true", help="Kerberos: the ticket cache (KRB5CCNAME), no password")
    parser.add_argument("--sign-only", action="store_true", help="integrity without sealing")
    args = parser.parse_args()

    if args.ccache:
        credentials = Credentials(ccache=env("KRB5CCNAME"))
    elif not args.password:
        parser.error("no password: pass --password, set SAMBA_DC_ADMIN_PASSWORD, or use --ccache")
    elif args.mech == "ntlm":
        credentials = Credentials(username=args.user, domain=args.domain, password=args.password)
    else:
        credentials = Credentials(username=f"{args.user}@{args.realm}", password=args.password)
    context = SecurityContext.client(
        target=f"ldap/{args.host}",
        protocol=args.mech,
        credentials=credentials,
        protection_level="sign" if args.sign_only else "encrypt_and_sign",
        require_mutual_auth=args.mech == "kerberos",
    )

    client = LdapClient(args.address, args.port)
    client.sasl_bind(context)
    client.start_security_layer(context)
    assert client.connection is not None and client.connection.info is not None
    info = client.connection.info
    print(
        f"bind ok: mech={args.mech} negotiated={info.protocol} protection={info.protection_level.value} "
        f"mutual={info.mutually_authenticated} server=ldap/{args.host}"
    )

    client.send(search_request(args.base, "user", ["sAMAccountName", "objectSid"]))
    accounts = []
    while True:
        _, tag, value = client.receive()
        if tag == 0x64:  # SearchResultEntry
            name, attributes = (inner for _, inner in children(value))
            for _, attribute in children(attributes):
                (_, kind), (_, values) = children(attribute)
                if kind.lower() == b"samaccountname":
                    accounts.extend(v.decode() for _, v in children(values))
            print(f"entry: {name.decode()}")
        elif tag == 0x65:  # SearchResultDone
            code, message, _ = ldap_result(value)
            if code != 0:
                raise RuntimeError(f"search failed: resultCode {code}: {message}")
            break
    client.close()
    print(f"accounts: {' '.join(sorted(accounts))}")
    records = client.messages_per_record
    print(f"sealed buffers: {len(records)}, most LDAP messages in one: {max(records, default=0)}")
    if args.user not in accounts:
        print(f"the search did not return {args.user}", file=sys.stderr)
        return 1
    print(f"search ok: {len(accounts)} entries")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one clear line for scripts and the test suite
        print(f"ldap_sealed_search: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
