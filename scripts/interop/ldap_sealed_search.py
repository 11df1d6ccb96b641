#!/usr/bin/env python3
"""Sealed (or signed) LDAP bind + search against an AD DC, with pyspnego.

An interop check for the pyspnego layer: a SASL GSS-SPNEGO bind to Active
Directory (the Samba DC from ./samba-dc), then every LDAP message travels
through the GSS security layer, exactly like NegotiateStream data records:

    4-byte big-endian length || wrap(LDAPMessage)        (sealed, default)
    4-byte big-endian length || signature || LDAPMessage (NTLM, --sign-only)

It then runs a subtree search for the bound account, which needs an
authenticated connection (AD refuses anonymous searches), and Samba's default
"ldap server require strong auth = yes" refuses SASL binds without signing.

    eval "$(./samba-dc start)"
    python3 ldap_sealed_search.py --mech ntlm
    python3 ldap_sealed_search.py --mech kerberos      # password, or the ccache with --ccache
    python3 ldap_sealed_search.py --mech negotiate --sign-only

Defaults come from the SAMBA_DC_* variables printed by ./samba-dc.  The LDAP
messages are encoded by hand (the few BER shapes needed), so the example
depends on pyspnego only.  Exit status 0 when bind and search succeed.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from collections.abc import Iterator

import spnego

# ---------------------------------------------------------------- tiny BER


def ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + ber_len(len(value)) + value


def ber_int(tag: int, n: int) -> bytes:
    return tlv(tag, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


def octets(s: str | bytes, tag: int = 0x04) -> bytes:
    return tlv(tag, s.encode() if isinstance(s, str) else s)


def parse(buf: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """One TLV at pos -> (tag, value, next_pos)."""
    tag = buf[pos]
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    return tag, buf[pos:pos + n], pos + n


def children(value: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(value):
        tag, v, pos = parse(value, pos)
        yield tag, v


# ---------------------------------------------------------------- LDAP PDUs

def ldap_message(msg_id: int, op: bytes) -> bytes:
    return tlv(0x30, ber_int(0x02, msg_id) + op)


def bind_request(token: bytes | None) -> bytes:
    sasl = octets("GSS-SPNEGO") + (octets(token) if token is not None else b"")
    return tlv(0x60, ber_int(0x02, 3) + octets("") + tlv(0xA3, sasl))


def search_request(base: str, attr: str, value: str, attrs: list[str]) -> bytes:
    flt = tlv(0xA3, octets(attr) + octets(value))          # equalityMatch
    return tlv(0x63, octets(base) + ber_int(0x0A, 2) + ber_int(0x0A, 0)   # subtree, never deref
               + ber_int(0x02, 10) + ber_int(0x02, 30) + tlv(0x01, b"\x00")
               + flt + tlv(0x30, b"".join(octets(a) for a in attrs)))


def complete_tlv_end(buf: bytes) -> int:
    """Length of the first TLV in buf if it is complete there, else 0."""
    if len(buf) < 2:
        return 0
    n, hdr = buf[1], 2
    if n & 0x80:
        k = n & 0x7F
        if len(buf) < 2 + k:
            return 0
        n, hdr = int.from_bytes(buf[2:2 + k], "big"), 2 + k
    return hdr + n if len(buf) >= hdr + n else 0


def split_message(pdu: bytes) -> tuple[int, int, bytes]:
    """LDAPMessage -> (message id, protocolOp tag, protocolOp value)."""
    tag, body, _ = parse(pdu)
    assert tag == 0x30, f"not an LDAPMessage: tag {tag:#x}"
    parts = list(children(body))
    return int.from_bytes(parts[0][1], "big"), parts[1][0], parts[1][1]


def ldap_result(value: bytes) -> tuple[int, str, dict[int, bytes]]:
    """LDAPResult fields -> (resultCode, diagnosticMessage, {tag: value} of the rest)."""
    parts = list(children(value))
    extra = {t: v for t, v in parts[3:]}
    return int.from_bytes(parts[0][1], "big"), parts[2][1].decode(errors="replace"), extra


# ---------------------------------------------------------------- transport

class LdapConnection:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buf = b""           # bytes from the socket not yet consumed
        self.plain = b""         # unwrapped bytes not yet parsed into messages
        self.msg_id = 0
        self.ctx = None          # set once the security layer is on
        self.sign_only = False

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, op: bytes) -> int:
        self.msg_id += 1
        pdu = ldap_message(self.msg_id, op)
        if self.ctx is None:
            self.sock.sendall(pdu)
        else:
            blob = self._protect(pdu)
            self.sock.sendall(struct.pack(">I", len(blob)) + blob)
        return self.msg_id

    def recv(self) -> tuple[int, int, bytes]:
        if self.ctx is None:
            head = self._recv_exact(2)
            if head[1] & 0x80:
                head += self._recv_exact(head[1] & 0x7F)
            n = head[1] if not head[1] & 0x80 else int.from_bytes(head[2:], "big")
            return split_message(head + self._recv_exact(n))
        # One protected buffer may carry several LDAP messages (Samba sends a
        # SearchResultEntry and the SearchResultDone in one), and one message
        # could in principle span buffers: parse from the plaintext stream.
        while True:
            end = complete_tlv_end(self.plain)
            if end:
                pdu, self.plain = self.plain[:end], self.plain[end:]
                return split_message(pdu)
            (n,) = struct.unpack(">I", self._recv_exact(4))
            self.plain += self._unprotect(self._recv_exact(n))

    # The security layer.  pyspnego's NTLM wrap(encrypt=False) still seals,
    # so NTLM sign-only uses sign()/verify() and puts the 16-byte signature
    # in front of the plaintext, the layout Windows uses.  Kerberos
    # integrity-only is a real RFC 4121 wrap token with conf_flag 0.
    def _protect(self, pdu: bytes) -> bytes:
        if self.sign_only and self.ctx.negotiated_protocol == "ntlm":
            return self.ctx.sign(pdu) + pdu
        res = self.ctx.wrap(pdu, encrypt=not self.sign_only)
        if not self.sign_only and not res.encrypted:
            raise RuntimeError("wrap() did not encrypt")
        return res.data

    def _unprotect(self, blob: bytes) -> bytes:
        if self.sign_only and self.ctx.negotiated_protocol == "ntlm":
            sig, data = blob[:16], blob[16:]
            self.ctx.verify(data, sig)
            return data
        res = self.ctx.unwrap(blob)
        if not self.sign_only and not res.encrypted:
            raise RuntimeError("server sent an unsealed message on a sealed connection")
        return res.data


def sasl_bind(conn: LdapConnection, ctx: spnego.ContextProxy) -> None:
    token = ctx.step()
    while True:
        conn.send(bind_request(token))
        _, tag, value = conn.recv()
        assert tag == 0x61, f"expected BindResponse, got tag {tag:#x}"
        code, diag, extra = ldap_result(value)
        server_token = extra.get(0x87)
        if code not in (0, 14):           # 14 = saslBindInProgress
            raise RuntimeError(f"bind failed: resultCode {code}: {diag}")
        # AP-REP / mechListMIC / CHALLENGE
        token = ctx.step(server_token) if server_token and not ctx.complete else None
        if code == 0:
            if not ctx.complete:
                raise RuntimeError("server says success but the security context is not complete")
            return
        if token is None:
            raise RuntimeError("server wants another round but the client has no token")


def main() -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mech", choices=["ntlm", "kerberos", "negotiate"], default="negotiate",
                   help="pyspnego protocol: raw NTLM, raw Kerberos, or SPNEGO (default)")
    p.add_argument("--address", default=env("SAMBA_DC_ADDRESS", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("SAMBA_DC_LDAP_PORT", "389")))
    p.add_argument("--host", default=env("SAMBA_DC_HOST", "dc1.samdom.test"),
                   help="host part of the SPN ldap/HOST (need not resolve)")
    p.add_argument("--base", default=env("SAMBA_DC_BASE_DN", "DC=samdom,DC=test"))
    p.add_argument("--user", default=env("SAMBA_DC_ADMIN", "Administrator"))
    p.add_argument("--password", default=env("SAMBA_DC_ADMIN_PASSWORD"))
    p.add_argument("--domain", default=env("SAMBA_DC_DOMAIN", "SAMDOM"),
                   help="NetBIOS domain for NTLM (user becomes DOMAIN\\user)")
    p.add_argument("--realm", default=env("SAMBA_DC_REALM", "SAMDOM.TEST"),
                   help="realm for Kerberos (user becomes user@REALM)")
    p.add_argument("--ccache", action="store_true",
                   help="Kerberos/negotiate: use the ticket cache (KRB5CCNAME), no password")
    p.add_argument("--sign-only", action="store_true", help="integrity only, no sealing")
    a = p.parse_args()

    if a.ccache:
        username = password = None
    elif a.mech == "ntlm":
        username, password = f"{a.domain}\\{a.user}", a.password
    else:
        username, password = f"{a.user}@{a.realm}", a.password
    if not a.ccache and not password:
        p.error("no password: pass --password, set SAMBA_DC_ADMIN_PASSWORD, or use --ccache")

    req = spnego.ContextReq.mutual_auth | spnego.ContextReq.integrity | spnego.ContextReq.sequence_detect
    if not a.sign_only:
        req |= spnego.ContextReq.confidentiality
    ctx = spnego.client(username, password, hostname=a.host, service="ldap",
                        protocol=a.mech, context_req=req)

    conn = LdapConnection(a.address, a.port)
    sasl_bind(conn, ctx)
    conn.ctx, conn.sign_only = ctx, a.sign_only
    print(f"bind ok: mech={a.mech} negotiated={ctx.negotiated_protocol} "
          f"protection={'sign' if a.sign_only else 'seal'} server=ldap/{a.host}")

    conn.send(search_request(a.base, "sAMAccountName", a.user, ["distinguishedName", "objectSid"]))
    entries = 0
    while True:
        _, tag, value = conn.recv()
        if tag == 0x64:                    # SearchResultEntry
            entries += 1
            name, attrs = [v for _, v in children(value)]
            print(f"entry: {name.decode()}")
            for _, pa in children(attrs):
                (_, typ), (_, vals) = children(pa)
                for _, v in children(vals):
                    shown = v.decode() if typ == b"distinguishedName" else v.hex()
                    print(f"  {typ.decode()}: {shown}")
        elif tag == 0x65:                  # SearchResultDone
            code, diag, _ = ldap_result(value)
            if code != 0:
                raise RuntimeError(f"search failed: resultCode {code}: {diag}")
            break
    conn.send(tlv(0x42, b""))              # UnbindRequest
    conn.sock.close()
    if entries == 0:
        print("search returned no entry", file=sys.stderr)
        return 1
    print(f"search ok: {entries} entr{'y' if entries == 1 else 'ies'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # a clear one-line failure for scripts
        print(f"ldap_sealed_search: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
