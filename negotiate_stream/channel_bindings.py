"""Channel bindings (RFC 5929 ``tls-server-end-point``) that tie the Negotiate handshake to a TLS channel.

When Negotiate runs inside TLS, both sides can hash the server's certificate into the authentication; a
man-in-the-middle that terminates TLS with another certificate then fails the handshake with
:class:`~negotiate_stream.errors.ChannelBindingError`. Pass the value as ``channel_bindings=`` to any adapter::

    bindings = tls_server_end_point(ssl_object.getpeercert(binary_form=True))   # client side
    bindings = tls_server_end_point(open("server.der", "rb").read())            # server side: its own cert

The value is the GSS ``application_data`` Windows and .NET use: ``b"tls-server-end-point:" + hash``.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["for_ssl_object", "tls_server_end_point"]

_PREFIX = b"tls-server-end-point:"


def tls_server_end_point(certificate: bytes | x509.Certificate) -> bytes:
    """Channel-binding application data for a server certificate (DER bytes or a parsed certificate).

    The hash is the certificate's signature hash, except that MD5 and SHA-1 are replaced by SHA-256
    (RFC 5929 section 4.1); certificates whose signature has no separate hash (Ed25519, Ed448) use SHA-256,
    as Windows does.
    """
    cert = certificate if isinstance(certificate, x509.Certificate) else x509.load_der_x509_certificate(certificate)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(Encoding.DER))
    return _PREFIX + digest.finalize()


def for_ssl_object(ssl_object: ssl.SSLObject | ssl.SSLSocket, *, server_certificate: bytes | None = None) -> bytes:
    """Channel bindings for an established TLS connection.

    Client side: computed from the peer certificate. Server side (``ssl_object.server_side``): Python's ssl
    module does not expose our own certificate, so pass its DER bytes as ``server_certificate``.
    """
    if ssl_object.server_side:
        if server_certificate is None:
            raise ValueError(
                "a TLS server must pass its own certificate (DER) as server_certificate: Python's ssl module "
                "cannot return it"
            )
        return tls_server_end_point(server_certificate)
    peer = ssl_object.getpeercert(binary_form=True)
    if not peer:
        raise ValueError("the TLS peer sent no certificate: channel bindings need the server certificate")
    return tls_server_end_point(peer)
