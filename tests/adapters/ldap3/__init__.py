"""The ldap3 integration against a fake LDAP server with a real SASL layer (honest and hostile)."""
