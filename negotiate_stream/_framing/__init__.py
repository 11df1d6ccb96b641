"""Pure wire codecs (no I/O, no cryptography): MS-NNS and SASL security-layer framing."""
