"""Throwaway self-signed TLS certificates for ``localhost``: the tests' TLS channels and the benchmark's baselines.

The library reads certificates (channel bindings) but never makes one, so the one maker lives here, next to the
tests; ``benchmarks/loopback.py`` imports it as well (the harness runs from the repository root). No pytest here.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = ["TLSChannel", "self_signed_channel"]


@dataclass(frozen=True)
class TLSChannel:
    """A throwaway self-signed server certificate and the TLS contexts of both ends (the client trusts anything)."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    #: The server certificate (DER): what tls-server-end-point bindings are computed from.
    certificate: bytes
    #: The same certificate (PEM), for a client that verifies it: ``ssl.create_default_context(cadata=pem)``.
    pem: str


def self_signed_channel(
    *, key: Literal["ecdsa", "rsa"] = "ecdsa", signature_hash: hashes.SHA256 | hashes.SHA384 | None = None
) -> TLSChannel:
    """A certificate for ``localhost`` and ``127.0.0.1`` (its own CA), valid from five minutes ago for a day.

    ``key``: ECDSA P-256 or RSA 2048. ``signature_hash``: SHA-256 unless given (tls-server-end-point bindings
    follow it: SHA-384 shows that they do not assume SHA-256).
    """
    private_key = ec.generate_private_key(ec.SECP256R1()) if key == "ecdsa" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, signature_hash or hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads only files: the key lives in a private temporary directory for that one call.
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(pem)
        key_path.write_bytes(
            private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        server.load_cert_chain(cert_path, key_path)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return TLSChannel(server, client, cert.public_bytes(serialization.Encoding.DER), pem.decode("ascii"))
