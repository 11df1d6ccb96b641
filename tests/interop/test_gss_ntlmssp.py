"""gss-ntlmssp (the NTLM GSSAPI mechanism .NET uses on Linux), driven through python-gssapi, in both roles.

Tokens and wrap tokens go straight between python-gssapi and our :class:`SecurityContext` (the .NET tests cover
the same mechanism through the MS-NNS stream). gss-ntlmssp reads its acceptor accounts from ``NTLM_USER_FILE``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from negotiate_stream._context import Credentials, SecurityContext
from negotiate_stream.errors import AuthenticationError, ChannelBindingError, IntegrityError

from .conftest import NTLM_DOMAIN, NTLM_PASSWORD, NTLM_USER

pytestmark = pytest.mark.interop

gssapi = pytest.importorskip("gssapi", reason="interop peer missing: python-gssapi (run scripts/install-interop)")

Flag = gssapi.RequirementFlag
SEAL_FLAGS = Flag.integrity | Flag.confidentiality | Flag.replay_detection | Flag.out_of_sequence_detection
SIGN_FLAGS = Flag.integrity | Flag.replay_detection | Flag.out_of_sequence_detection
BINDINGS = b"tls-server-end-point:" + bytes(32)


@pytest.fixture(scope="module")
def ntlm_mech(gss_ntlmssp: str, ntlm_user_file: str) -> Iterator[gssapi.OID]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NTLM_USER_FILE", ntlm_user_file)
        yield gssapi.OID.from_int_seq(gss_ntlmssp)


def gss_initiator(
    mech: gssapi.OID, *, password: str = NTLM_PASSWORD, flags: Flag = SEAL_FLAGS, bindings: bytes | None = None
) -> gssapi.SecurityContext:
    user = gssapi.Name(f"{NTLM_DOMAIN}\\{NTLM_USER}", gssapi.NameType.user)
    creds = gssapi.raw.acquire_cred_with_password(user, password.encode(), usage="initiate", mechs=[mech]).creds
    return gssapi.SecurityContext(
        name=gssapi.Name("host@localhost", gssapi.NameType.hostbased_service),
        creds=gssapi.Credentials(creds),
        mech=mech,
        usage="initiate",
        flags=flags,
        channel_bindings=gssapi.raw.ChannelBindings(application_data=bindings) if bindings else None,
    )


def gss_acceptor(mech: gssapi.OID, *, bindings: bytes | None = None) -> gssapi.SecurityContext:
    return gssapi.SecurityContext(
        creds=gssapi.Credentials(usage="accept", mechs=[mech]),
        usage="accept",
        channel_bindings=gssapi.raw.ChannelBindings(application_data=bindings) if bindings else None,
    )


def exchange_tokens(
    client: gssapi.SecurityContext | SecurityContext, server: gssapi.SecurityContext | SecurityContext
) -> None:
    """Step the initiator and the acceptor in turn (python-gssapi's or ours, either way round) until both are done."""
    token = client.step(None)
    while token is not None and (token := server.step(token)) is not None:
        token = client.step(token)
    assert client.complete and server.complete


def our_server(ntlm_user_file: str, **options: object) -> SecurityContext:
    return SecurityContext.server(credentials=Credentials(ntlm_user_file=ntlm_user_file), **options)  # type: ignore[arg-type]


def our_client(password: str = NTLM_PASSWORD, **options: object) -> SecurityContext:
    credentials = Credentials(username=NTLM_USER, domain=NTLM_DOMAIN, password=password)
    return SecurityContext.client(credentials=credentials, protocol="ntlm", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_gss_ntlmssp_client_our_server_sealed(ntlm_mech: gssapi.OID, ntlm_user_file: str, protocol: str) -> None:
    """A gss-ntlmssp client authenticates to our NTLM and Negotiate acceptors; sealed records flow both ways."""
    client = gss_initiator(ntlm_mech)
    server = our_server(ntlm_user_file, protocol=protocol)
    exchange_tokens(client, server)
    assert server.negotiated_protocol == "ntlm"
    assert server.peer_identity == f"{NTLM_DOMAIN}\\{NTLM_USER}"
    assert server.protection_level.value == "encrypt_and_sign"
    for index in range(3):  # several records: the RC4 state and sequence numbers stay in step
        message = f"record {index}".encode() * 100
        wrapped = client.wrap(message, True)
        assert wrapped.encrypted and message not in wrapped.message
        assert server.unprotect(wrapped.message) == message
        assert client.unwrap(server.protect(message[::-1])).message == message[::-1]


def test_gss_spnego_ntlm_client_our_negotiate_server(ntlm_mech: gssapi.OID, ntlm_user_file: str) -> None:
    """python-gssapi's own SPNEGO mechanism offering gss-ntlmssp, against our SPNEGO acceptor."""
    user = gssapi.Name(f"{NTLM_DOMAIN}\\{NTLM_USER}", gssapi.NameType.user)
    creds = gssapi.raw.acquire_cred_with_password(user, NTLM_PASSWORD.encode(), usage="initiate", mechs=[ntlm_mech])
    client = gssapi.SecurityContext(
        name=gssapi.Name("host@localhost", gssapi.NameType.hostbased_service),
        creds=gssapi.Credentials(creds.creds),
        mech=gssapi.OID.from_int_seq("1.3.6.1.5.5.2"),
        usage="initiate",
        flags=SEAL_FLAGS,
    )
    server = our_server(ntlm_user_file)
    exchange_tokens(client, server)
    assert server.negotiated_protocol == "ntlm"
    assert server.unprotect(client.wrap(b"through spnego", True).message) == b"through spnego"
    assert client.unwrap(server.protect(b"and back")).message == b"and back"


def test_our_client_gss_ntlmssp_server_sealed(ntlm_mech: gssapi.OID) -> None:
    """Our NTLM client authenticates to gss-ntlmssp's acceptor; sealed records flow both ways."""
    client = our_client()
    server = gss_acceptor(ntlm_mech)
    exchange_tokens(client, server)
    assert str(server.initiator_name).rstrip("\x00") == f"{NTLM_DOMAIN}\\{NTLM_USER}"
    assert client.protection_level.value == "encrypt_and_sign"
    for index in range(3):
        message = f"payload {index}".encode() * 50
        unwrapped = server.unwrap(client.protect(message))
        assert unwrapped.encrypted and unwrapped.message == message
        assert client.unprotect(server.wrap(message, True).message) == message


def test_sign_only_windows_layout_verifies_with_gss_ntlmssp_mic(ntlm_mech: gssapi.OID, ntlm_user_file: str) -> None:
    """Our default NTLM Sign record (16-byte signature + plaintext, Windows' layout) is a valid MS-NLMP MIC."""
    client = gss_initiator(ntlm_mech, flags=SIGN_FLAGS)
    server = our_server(ntlm_user_file, protection_level="sign")
    exchange_tokens(client, server)
    assert server.protection_level.value == "sign"
    record = server.protect(b"signed, not sealed")
    signature, plaintext = record[:16], record[16:]
    assert plaintext == b"signed, not sealed"
    client.verify_signature(plaintext, signature)
    mic = client.get_signature(b"from gss")
    assert server.unprotect(mic + b"from gss") == b"from gss"
    with pytest.raises(IntegrityError):
        server.unprotect(client.get_signature(b"original") + b"tampered")


def test_sign_level_sealed_like_gss_ntlmssp(ntlm_mech: gssapi.OID, ntlm_user_file: str) -> None:
    """gss-ntlmssp's wrap without confidentiality still seals; ``ntlm_seal_sign_only=True`` matches it."""
    client = gss_initiator(ntlm_mech, flags=SIGN_FLAGS)
    server = our_server(ntlm_user_file, protection_level="sign", ntlm_seal_sign_only=True)
    exchange_tokens(client, server)
    wrapped = client.wrap(b"gss sign level", False)
    assert b"gss sign level" not in wrapped.message  # evidence: sealed although conf was not asked for
    assert server.unprotect(wrapped.message) == b"gss sign level"
    assert client.unwrap(server.protect(b"ours")).message == b"ours"


def test_gss_ntlmssp_client_wrong_password(ntlm_mech: gssapi.OID, ntlm_user_file: str) -> None:
    """Our acceptor rejects a gss-ntlmssp client's wrong password with SEC_E_LOGON_DENIED."""
    client = gss_initiator(ntlm_mech, password="wrong password")
    server = our_server(ntlm_user_file, protocol="ntlm")
    with pytest.raises(AuthenticationError) as caught:
        exchange_tokens(client, server)
    assert caught.value.status == 0x8009030C  # SEC_E_LOGON_DENIED


def test_our_client_wrong_password_rejected_by_gss_ntlmssp(ntlm_mech: gssapi.OID) -> None:
    """gss-ntlmssp's acceptor rejects our client's wrong password with a GSSError."""
    client = our_client(password="wrong password")
    server = gss_acceptor(ntlm_mech)
    with pytest.raises(gssapi.exceptions.GSSError):
        exchange_tokens(client, server)


def test_channel_bindings_with_gss_ntlmssp(ntlm_mech: gssapi.OID, ntlm_user_file: str) -> None:
    """Our acceptor accepts gss-ntlmssp's matching channel bindings and raises ChannelBindingError on others."""
    client = gss_initiator(ntlm_mech, bindings=BINDINGS)
    server = our_server(ntlm_user_file, protocol="ntlm", channel_bindings=BINDINGS)
    exchange_tokens(client, server)
    assert server.complete

    client = gss_initiator(ntlm_mech, bindings=b"tls-server-end-point:" + bytes([1]) * 32)
    server = our_server(ntlm_user_file, protocol="ntlm", channel_bindings=BINDINGS)
    with pytest.raises(ChannelBindingError):
        exchange_tokens(client, server)


def test_our_client_channel_bindings_checked_by_gss_ntlmssp(ntlm_mech: gssapi.OID) -> None:
    """gss-ntlmssp's acceptor accepts our client's matching channel bindings and rejects others."""
    client = our_client(channel_bindings=BINDINGS)
    exchange_tokens(client, gss_acceptor(ntlm_mech, bindings=BINDINGS))
    client = our_client(channel_bindings=BINDINGS)
    with pytest.raises(gssapi.exceptions.GSSError):
        exchange_tokens(client, gss_acceptor(ntlm_mech, bindings=b"tls-server-end-point:" + bytes(33)))


def test_our_client_sign_only_verified_by_gss_ntlmssp(ntlm_mech: gssapi.OID) -> None:
    """Our initiator's sign-only records verify with gss-ntlmssp's acceptor (Samba rejects them: see the LDAP tests)."""
    client = our_client(protection_level="sign")
    server = gss_acceptor(ntlm_mech)
    exchange_tokens(client, server)
    assert client.protection_level.value == "sign"
    for message in (b"first signed record", b"second"):
        record = client.protect(message)
        assert record[16:] == message
        server.verify_signature(message, record[:16])
    mic = server.get_signature(b"reply")
    assert client.unprotect(mic + b"reply") == b"reply"
