"""Samba AD DC with strong auth required: ldap3 sessions signed and sealed by ``negotiate_stream.ldap3``.

The DC refuses a simple bind and an unsigned SASL bind on 389 (``ldap server require strong auth``). Every case
of the matrix (NTLM, SPNEGO over NTLM, Kerberos over GSS-SPNEGO and over RFC 4752 GSSAPI, SPNEGO over Kerberos;
each sign-only and sealed) searches, round-trips an entry, pages through 1,000 entries and reads one LDAP message
larger than 64 KiB. Peer facts verified here: Samba wraps LDAP-style NTLM "sign" with the sealed layout
(``force_wrap_seal``; what ``ntlm_seal_sign_only``'s default does under SASL framing, so the matrix passes none)
and rejects the MS-NNS sign layout; Samba 4.17 refuses every SASL bind over TLS under
``strong auth = yes``, accepts one without a layer under ``allow_sasl_over_tls``, and does not check channel
bindings. ``examples/ldap_sealed_search.py`` runs against the first DC, the LDAPS tests against the second.
"""

from __future__ import annotations

import os
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from negotiate_stream import ConnectionLostError, Credentials, ProtectionLevel
from negotiate_stream.channel_bindings import tls_server_end_point
from negotiate_stream.errors import SEC_E_LOGON_DENIED, SEC_E_QOP_NOT_SUPPORTED
from negotiate_stream.ldap3 import SaslBindError, SaslSession, bind
from tests.support.ldap import RecordCounter, RecordingSocket, ldap_message_sizes

from .conftest import ROOT, SambaDC, skip_without_gssapi

pytestmark = pytest.mark.interop

EXAMPLE = str(ROOT / "examples" / "ldap_sealed_search.py")
ENTRIES = 1000
PHOTO = bytes(range(256)) * 390  # 99,840 bytes: thumbnailPhoto's limit is 102,400
# ldap3 reads these attributes as text without the schema (get_info=NONE keeps each bind to one round trip).
NO_INFO = {"get_info": ldap3.NONE}


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: how to bind, and what the DC negotiates."""

    protocol: str
    mechanism: str
    level: str
    negotiated: str
    negotiated_level: str

    @property
    def kerberos(self) -> bool:
        """True when the case needs python-gssapi."""
        return self.negotiated == "kerberos"


CASES = {
    "ntlm-sign": Case("ntlm", "GSS-SPNEGO", "sign", "ntlm", "sign"),
    "ntlm-seal": Case("ntlm", "GSS-SPNEGO", "encrypt_and_sign", "ntlm", "encrypt_and_sign"),
    # A NetBIOS domain names no Kerberos realm: SPNEGO falls back to NTLM (NegTokenInit, mechListMIC).
    "spnego-ntlm-sign": Case("negotiate", "GSS-SPNEGO", "sign", "ntlm", "sign"),
    "spnego-ntlm-seal": Case("negotiate", "GSS-SPNEGO", "encrypt_and_sign", "ntlm", "encrypt_and_sign"),
    # MIT Kerberos grants confidentiality even when only integrity is asked: GSS-SPNEGO "sign" ends up sealed.
    "kerberos-sign": Case("kerberos", "GSS-SPNEGO", "sign", "kerberos", "encrypt_and_sign"),
    "kerberos-seal": Case("kerberos", "GSS-SPNEGO", "encrypt_and_sign", "kerberos", "encrypt_and_sign"),
    # RFC 4752 negotiates the layer after the context: a true integrity-only Kerberos session.
    "gssapi-sign": Case("kerberos", "GSSAPI", "sign", "kerberos", "sign"),
    "gssapi-seal": Case("kerberos", "GSSAPI", "encrypt_and_sign", "kerberos", "encrypt_and_sign"),
    "spnego-kerberos-sign": Case("negotiate", "GSS-SPNEGO", "sign", "kerberos", "encrypt_and_sign"),
    "spnego-kerberos-seal": Case("negotiate", "GSS-SPNEGO", "encrypt_and_sign", "kerberos", "encrypt_and_sign"),
}


class Domain:
    """The running DC seen by the tests: credentials, servers, bound connections."""

    def __init__(self, dc: SambaDC) -> None:
        self.env = dc.env
        self.base = dc.env["SAMBA_DC_BASE_DN"]
        self.ou = f"OU=negotiate-stream,{self.base}"

    def credentials(self, case: Case) -> Credentials:
        """Administrator, named by NetBIOS domain (NTLM) or by realm (Kerberos)."""
        password = self.env["SAMBA_DC_ADMIN_PASSWORD"]
        if case.negotiated == "ntlm":
            return Credentials(username="Administrator", domain=self.env["SAMBA_DC_DOMAIN"], password=password)
        return Credentials(username=f"Administrator@{self.env['SAMBA_DC_REALM']}", password=password)

    def server(self, *, ldaps: bool = False) -> ldap3.Server:
        """The DC on 389, or on 636 with its certificate verified against its CA."""
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=self.env["SAMBA_DC_TLS_CA"],
            valid_names=[self.env["SAMBA_DC_HOST"]],  # the certificate names the DC, we connect to 127.0.0.1
        )
        port = int(self.env["SAMBA_DC_LDAPS_PORT" if ldaps else "SAMBA_DC_LDAP_PORT"])
        return ldap3.Server(self.env["SAMBA_DC_ADDRESS"], port=port, use_ssl=ldaps, tls=tls, **NO_INFO)

    def bind(self, conn: ldap3.Connection, case: Case, **options: Any) -> SaslSession:
        """Bind ``conn`` as Administrator for ``case`` (``options`` override)."""
        if case.kerberos:
            skip_without_gssapi()
        settings: dict[str, Any] = {
            "credentials": self.credentials(case),
            "protocol": case.protocol,
            "mechanism": case.mechanism,
            "protection_level": case.level,
            "target": f"ldap/{self.env['SAMBA_DC_HOST']}",
            "read_server_info": False,
            **options,
        }
        return bind(conn, **settings)

    def open(self, case: Case, **options: Any) -> tuple[ldap3.Connection, SaslSession, RecordingSocket]:
        """A connection on 389 bound for ``case``, with its raw bytes recorded."""
        conn = ldap3.Connection(self.server(), receive_timeout=60)
        conn.open(read_server_info=False)
        wire = conn.socket = RecordingSocket(conn.socket)
        return conn, self.bind(conn, case, **options), wire


@pytest.fixture(scope="module")
def domain(samba_dc: SambaDC) -> Iterator[Domain]:
    """The DC, with its Kerberos configuration and ticket cache set in this process for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRB5_CONFIG", samba_dc.env["SAMBA_DC_KRB5_CONFIG"])
        patch.setenv("KRB5CCNAME", samba_dc.env["KRB5CCNAME"])
        yield Domain(samba_dc)


@pytest.fixture(scope="module")
def populated(domain: Domain) -> Domain:
    """An OU with 1,000 contacts and one with a 99,840-byte thumbnailPhoto, added over a sealed NTLM session."""
    conn, _, wire = domain.open(CASES["ntlm-seal"])
    sent_before = len(wire.sent)
    assert conn.add(domain.ou, "organizationalUnit"), conn.result
    for i in range(ENTRIES):
        assert conn.add(f"CN=c{i:04d},{domain.ou}", "contact", {"description": f"entry {i}"}), conn.result
    assert conn.add(f"CN=big,{domain.ou}", "contact", {"thumbnailPhoto": PHOTO}), conn.result
    conn.unbind()
    # No buffer exceeds one record (0xFC00 plaintext + the wrap overhead): the 100 kB add request left in several
    # SASL buffers, and Samba reassembled the one LDAP message from them.
    sizes = sasl_buffer_sizes(bytes(wire.sent[sent_before:]))
    assert max(sizes) <= 0xFC00 + 64 and sum(size > 0xFC00 for size in sizes) >= 1
    return domain


def sasl_buffer_sizes(stream: bytes) -> list[int]:
    """The lengths announced by the SASL buffer headers of a recorded byte stream."""
    sizes, pos = [], 0
    while pos + 4 <= len(stream):
        (size,) = struct.unpack_from(">I", stream, pos)
        sizes.append(size)
        pos += 4 + size
    return sizes


# -- the matrix on 389 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_search(domain: Domain, name: str) -> None:
    """The bind negotiates what the case expects; a search returns the accounts, several replies per buffer."""
    case = CASES[name]
    conn, session, wire = domain.open(case)
    assert session.info.protocol == case.negotiated and session.mechanism == case.mechanism
    assert session.info.protection_level is ProtectionLevel(case.negotiated_level)
    assert session.info.mutually_authenticated == case.kerberos
    counter = RecordCounter(conn.socket.connection)
    assert conn.search(domain.base, "(objectClass=user)", attributes=["sAMAccountName"])
    accounts = {str(entry.sAMAccountName) for entry in conn.entries}
    assert {"Administrator", "bob", "krbtgt"} <= accounts
    # Samba puts several LDAP replies (entries + SearchResultDone) into one buffer, and they were all parsed.
    assert max(len(ldap_message_sizes(plaintext)) for plaintext in counter.plaintexts) >= 2
    # Sign-only or sealed, nothing readable crosses the wire (NTLM sign is sealed LDAP-style; MIT seals).
    # Only the RFC 4752 integrity layer really leaves the data in clear, protected by its checksums.
    assert (b"krbtgt" in wire.received) == (case.negotiated_level == "sign" and case.kerberos)
    conn.unbind()


@pytest.mark.parametrize("name", CASES)
def test_add_modify_read_back_delete(populated: Domain, name: str) -> None:
    """An entry is added, modified, read back and deleted through the security layer."""
    conn, _, _ = populated.open(CASES[name])
    dn = f"CN=round-trip-{name},{populated.ou}"
    assert conn.add(dn, "contact", {"description": "added"}), conn.result
    assert conn.modify(dn, {"description": [(ldap3.MODIFY_REPLACE, [f"modified by {name}"])]}), conn.result
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["description"])
    assert str(conn.entries[0].description) == f"modified by {name}"
    assert conn.delete(dn), conn.result
    assert not conn.search(dn, "(objectClass=*)", ldap3.BASE) and conn.result["description"] == "noSuchObject"
    conn.unbind()


@pytest.mark.parametrize("name", CASES)
def test_paged_search_over_1000_entries(populated: Domain, name: str) -> None:
    """A paged search (simple paged results control) returns all 1,000 contacts, 150 per page."""
    conn, _, _ = populated.open(CASES[name])
    entries = conn.extend.standard.paged_search(
        populated.ou, "(cn=c*)", attributes=["description"], paged_size=150, generator=False
    )
    assert len(entries) == ENTRIES
    assert {entry["attributes"]["description"][0] for entry in entries} == {f"entry {i}" for i in range(ENTRIES)}
    conn.unbind()


@pytest.mark.parametrize("name", CASES)
def test_message_larger_than_64_kib(populated: Domain, name: str) -> None:
    """A 99,840-byte attribute is read back whole; with Kerberos several SASL buffers carry that one message."""
    case = CASES[name]
    conn, _, _ = populated.open(case)
    counter = RecordCounter(conn.socket.connection)
    assert conn.search(f"CN=big,{populated.ou}", "(objectClass=*)", ldap3.BASE, attributes=["thumbnailPhoto"])
    assert conn.entries[0].thumbnailPhoto.value == PHOTO
    stream = b"".join(counter.plaintexts)
    assert ldap_message_sizes(stream)[0] > 65536
    if case.kerberos:  # Samba wraps at most 65,476 bytes per Kerberos buffer
        assert len(counter.sizes) >= 2 and counter.sizes[0] < ldap_message_sizes(stream)[0]
    else:  # its NTLM layer sends the whole message in one buffer, larger than any MS-NNS record
        assert counter.sizes[0] > 65536
    conn.unbind()


@pytest.mark.parametrize("name", CASES)
def test_extended_operation(domain: Domain, name: str) -> None:
    """An extended operation (StartTLS) crosses the layer: Samba answers that SASL is already enabled."""
    conn, _, _ = domain.open(CASES[name])
    assert not conn.extended("1.3.6.1.4.1.1466.20037")
    assert conn.result["result"] == 1 and "SASL is already enabled" in conn.result["message"]
    conn.unbind()


# -- what the DC refuses on 389, and why NTLM sign is sealed -------------------------------------------------------


def test_simple_bind_is_refused(domain: Domain) -> None:
    """A simple bind on 389 (no TLS) is refused with strongerAuthRequired."""
    user = f"CN=Administrator,CN=Users,{domain.base}"
    conn = ldap3.Connection(domain.server(), user=user, password=domain.env["SAMBA_DC_ADMIN_PASSWORD"])
    assert not conn.bind()
    assert conn.result["description"] == "strongerAuthRequired"
    conn.unbind()


@pytest.mark.parametrize("name", ["ntlm-sign", "spnego-ntlm-sign", "kerberos-sign"])
def test_unsigned_sasl_bind_is_refused(domain: Domain, name: str) -> None:
    """A SASL bind without signing or sealing is SaslBindError strongerAuthRequired (8)."""
    conn = ldap3.Connection(domain.server())
    with pytest.raises(SaslBindError) as caught:
        domain.bind(conn, CASES[name], protection_level="none")
    assert caught.value.result_code == 8 and caught.value.result_name == "strongerAuthRequired"
    assert caught.value.status == SEC_E_QOP_NOT_SUPPORTED and "Sign or Seal are required" in str(caught.value)
    conn.unbind()


def test_wrong_password_is_invalid_credentials(domain: Domain) -> None:
    """A wrong password is SaslBindError invalidCredentials (49) with the SSPI code of Samba's message."""
    conn = ldap3.Connection(domain.server())
    wrong = Credentials(username="Administrator", domain=domain.env["SAMBA_DC_DOMAIN"], password="wrong")
    with pytest.raises(SaslBindError) as caught:
        domain.bind(conn, CASES["ntlm-seal"], credentials=wrong)
    assert caught.value.result_code == 49 and caught.value.status == SEC_E_LOGON_DENIED
    conn.unbind()


def test_ntlm_windows_sign_layout_is_refused(domain: Domain) -> None:
    """The MS-NNS sign layout (signature + plaintext) fails Samba's check and Samba hangs up: force_wrap_seal."""
    conn, session, _ = domain.open(CASES["ntlm-sign"], ntlm_seal_sign_only=False)
    assert session.info.protection_level is ProtectionLevel.SIGN
    with pytest.raises(ConnectionLostError):
        conn.search(domain.base, "(objectClass=user)")
    conn.unbind()
    log = Path(domain.env["SAMBA_DC_DIR"], "log", "samba.log").read_text(errors="replace")
    assert "NTLMSSP NTLM2 packet check failed due to invalid signature" in log


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # Samba's serial 0
def test_sasl_over_ldaps_is_refused_under_strong_auth_yes(domain: Domain) -> None:
    """Samba 4.17 with 'require strong auth = yes': no layer over TLS is strongerAuthRequired, a layer is 53."""
    for level, code in (("none", 8), ("sign", 53)):
        conn = ldap3.Connection(domain.server(ldaps=True))
        with pytest.raises(SaslBindError) as caught:
            domain.bind(conn, CASES["ntlm-sign"], protection_level=level)
        assert caught.value.result_code == code
        conn.unbind()


# -- the example script ----------------------------------------------------------------------------------------------


def run_example(dc: SambaDC, *args: str) -> subprocess.CompletedProcess[str]:
    """Run examples/ldap_sealed_search.py with the DC's variables."""
    env = {**os.environ, **dc.env, "KRB5_CONFIG": dc.env["SAMBA_DC_KRB5_CONFIG"]}
    return subprocess.run(
        [sys.executable, EXAMPLE, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "negotiated", "protection"),
    [
        (["--mech", "ntlm"], "ntlm", "encrypt_and_sign"),
        (["--mech", "ntlm", "--sign-only"], "ntlm", "sign"),
        (["--mech", "kerberos"], "kerberos", "encrypt_and_sign"),
        (["--mech", "negotiate"], "kerberos", "encrypt_and_sign"),
        (["--mech", "kerberos", "--ccache"], "kerberos", "encrypt_and_sign"),
        # MIT sets the confidentiality flag even for integrity-only requests; Samba then expects sealed buffers.
        (["--mech", "kerberos", "--sign-only"], "kerberos", "encrypt_and_sign"),
    ],
    ids=["ntlm", "ntlm-sign-only", "kerberos", "negotiate", "kerberos-ccache", "kerberos-sign-only"],
)
def test_example_search(samba_dc: SambaDC, args: list[str], negotiated: str, protection: str) -> None:
    """The example binds (NTLM sign-only included: no xfail left) and lists the accounts, bob among them."""
    if negotiated == "kerberos":
        skip_without_gssapi()
    result = run_example(samba_dc, *args)
    assert result.returncode == 0, result.stderr
    assert f"negotiated={negotiated} protection={protection}" in result.stdout
    assert f"mutual={negotiated == 'kerberos'}" in result.stdout
    assert "search ok" in result.stdout
    assert "accounts: Administrator" in result.stdout and " bob" in result.stdout


def test_example_as_a_second_user_with_ntlm(samba_dc: SambaDC) -> None:
    """A sealed NTLM bind + search against Samba also succeeds as a second account (bob)."""
    result = run_example(
        samba_dc, "--mech", "ntlm", "--user", "bob", "--password", samba_dc.env["SAMBA_DC_USER_PASSWORD"]
    )
    assert result.returncode == 0, result.stderr
    assert "negotiated=ntlm" in result.stdout and "search ok" in result.stdout


def test_example_wrong_password_fails_the_bind(samba_dc: SambaDC) -> None:
    """A wrong NTLM password fails the Samba bind with resultCode 49 (invalidCredentials) and exit status 1."""
    result = run_example(samba_dc, "--mech", "ntlm", "--password", "wrong password")
    assert result.returncode == 1
    assert "bind failed: resultCode 49" in result.stderr  # invalidCredentials


# -- LDAPS (the DC of 'allow_sasl_over_tls': 389 as strict, SASL without a layer accepted over TLS) -------------


TLS_DC = pytest.mark.parametrize("samba_dc", ["allow_sasl_over_tls"], indirect=True)


def certificate_bindings(domain: Domain) -> bytes:
    """tls-server-end-point of the DC's certificate, computed from its file."""
    pem = Path(domain.env["SAMBA_DC_DIR"], "private", "tls", "cert.pem").read_bytes()
    return tls_server_end_point(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


@TLS_DC
# SPNEGO over NTLM included: at level none its NTLM offers no KEY_EXCH either (a 1-byte session key was data 57).
@pytest.mark.parametrize("name", ["ntlm-sign", "spnego-ntlm-sign", "kerberos-sign", "spnego-kerberos-sign"])
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # Samba's serial 0
def test_ldaps_with_automatic_channel_bindings(domain: Domain, name: str) -> None:
    """Over ldaps:// the bindings come from the DC certificate, no SASL layer is added, and operations work."""
    conn = ldap3.Connection(domain.server(ldaps=True))
    session = domain.bind(conn, CASES[name], protection_level=None)
    assert session.tls and session.channel_bindings == certificate_bindings(domain)
    assert session.info.protection_level is ProtectionLevel.NONE and isinstance(conn.socket, ssl.SSLSocket)
    assert conn.search(domain.base, "(sAMAccountName=bob)", attributes=["sAMAccountName"])
    assert str(conn.entries[0].sAMAccountName) == "bob"
    conn.unbind()


@TLS_DC
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_start_tls_then_bind(domain: Domain) -> None:
    """StartTLS on 389, then the bind: channel bindings from that TLS session, no SASL layer."""
    conn = ldap3.Connection(domain.server())
    conn.open(read_server_info=False)
    assert conn.start_tls(read_server_info=False)
    session = domain.bind(conn, CASES["ntlm-sign"], protection_level=None)
    assert session.tls and session.channel_bindings == certificate_bindings(domain)
    assert conn.search(domain.base, "(sAMAccountName=bob)")
    conn.unbind()


@TLS_DC
@pytest.mark.parametrize("name", ["ntlm-sign", "kerberos-sign"])
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_samba_417_does_not_check_channel_bindings(domain: Domain, name: str) -> None:
    """Peer fact: Samba 4.17 accepts wrong channel bindings over LDAPS, and none at all (it does not check them)."""
    for bindings in (b"tls-server-end-point:" + bytes(32), None):
        conn = ldap3.Connection(domain.server(ldaps=True))
        session = domain.bind(conn, CASES[name], protection_level=None, channel_bindings=bindings)
        assert session.channel_bindings == bindings and conn.search(domain.base, "(sAMAccountName=bob)")
        conn.unbind()


@TLS_DC
def test_389_stays_strict_under_allow_sasl_over_tls(domain: Domain) -> None:
    """With allow_sasl_over_tls, 389 still refuses an unsigned SASL bind and a simple bind."""
    conn = ldap3.Connection(domain.server())
    with pytest.raises(SaslBindError) as caught:
        domain.bind(conn, CASES["ntlm-sign"], protection_level="none")
    assert caught.value.result_code == 8
    conn.unbind()
    user = f"CN=Administrator,CN=Users,{domain.base}"
    simple = ldap3.Connection(domain.server(), user=user, password=domain.env["SAMBA_DC_ADMIN_PASSWORD"])
    assert not simple.bind() and simple.result["description"] == "strongerAuthRequired"
    simple.unbind()
