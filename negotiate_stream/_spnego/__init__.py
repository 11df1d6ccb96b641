"""The pyspnego border: the ONLY package of negotiate_stream that imports pyspnego (``spnego.*``), gssapi or krb5.

Every pyspnego name, type and private attribute the library relies on is used here, one module per job, so an
upgrade of pyspnego is checked in one place:

- :mod:`.build` turns our options (credentials, target, protection level) into a pyspnego context, and refuses
  Kerberos with :class:`~negotiate_stream.errors.KerberosUnavailableError` when the ``kerberos`` extra is missing.
- :mod:`.translate` holds the tables that turn pyspnego (and krb5) exceptions into :mod:`negotiate_stream.errors`.
- :mod:`.environment` swaps ``NTLM_USER_FILE`` / ``KRB5_KTNAME`` into the environment around acceptor calls.
- :mod:`.records` picks the per-record protect / unprotect functions for the negotiated mechanism and level.
- :mod:`.ntlm_takeover` hands an NTLM context's record state (keys, sequence numbers, keystream position) after
  the handshake to the fast record path (:mod:`negotiate_stream._ntlm_records`), or refuses and leaves pyspnego
  untouched; ``NEGOTIATE_STREAM_NTLM_FAST_PATH=0`` keeps every record in pyspnego.
- :mod:`.ntlm_users` writes the NTLM acceptor's account file (:func:`write_ntlm_user_file`).
- :mod:`.acceptor` is the acceptor's extended protection (channel-binding policy, allowed service names), reading
  the client's NTLM AUTHENTICATE message through the pure parser :mod:`.ntlm_authenticate`.
- :mod:`.delegation` refuses a client whose delegation cannot happen, reports the impersonation level, and hands
  a server the client's forwarded Kerberos ticket (python-gssapi and krb5 are imported only here and in pyspnego).

:class:`negotiate_stream._context.SecurityContext` is built on these modules and imports nothing from pyspnego
itself; nothing above it sees a pyspnego type or exception.
"""
