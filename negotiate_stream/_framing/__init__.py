"""Pure wire codecs (no I/O, no cryptography): MS-NNS and SASL security-layer framing.

:mod:`._records` is the one parser of length-prefixed records; :mod:`.nns` and :mod:`.sasl` give it their
constants and add the MS-NNS handshake messages and the RFC 4752 layer message.
"""
