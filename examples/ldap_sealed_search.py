#!/usr/bin/env python3
"""Search a domain controller over a sealed (or signed) LDAP session: ldap3 + negotiate_stream.ldap3.

    eval "$(scripts/interop/samba-dc start --user bob)"
    python examples/ldap_sealed_search.py --mech ntlm       # or kerberos, negotiate; --sign-only; --ccache
    scripts/interop/samba-dc stop --clean

Defaults come from the SAMBA_DC_* variables printed by samba-dc. Exit status 0 when the bind and the search succeed.
"""

import argparse
import os
import sys

import ldap3

from negotiate_stream import Credentials
from negotiate_stream.ldap3 import SaslBindError, bind

env = os.environ.get
parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
parser.add_argument("--mech", choices=["ntlm", "kerberos", "negotiate"], default="negotiate")
parser.add_argument("--user", default=env("SAMBA_DC_ADMIN", "Administrator"))
parser.add_argument("--password", default=env("SAMBA_DC_ADMIN_PASSWORD"))
parser.add_argument("--ccache", action="store_true", help="Kerberos: the ticket cache (KRB5CCNAME), no password")
parser.add_argument("--sign-only", action="store_true", help="integrity without sealing")
args = parser.parse_args()
if args.ccache:
    credentials = Credentials(ccache=env("KRB5CCNAME"))
elif args.mech == "ntlm":  # NTLM names the NetBIOS domain, Kerberos the realm
    credentials = Credentials(username=args.user, domain=env("SAMBA_DC_DOMAIN"), password=args.password)
else:
    credentials = Credentials(username=f"{args.user}@{env('SAMBA_DC_REALM')}", password=args.password)
target = f"ldap/{env('SAMBA_DC_HOST', 'dc1.samdom.test')}"
conn = ldap3.Connection(ldap3.Server(env("SAMBA_DC_ADDRESS", "127.0.0.1"), get_info=ldap3.NONE))
try:
    level = "sign" if args.sign_only else "encrypt_and_sign"
    session = bind(conn, credentials=credentials, protocol=args.mech, protection_level=level, target=target)
except SaslBindError as exc:
    sys.exit(f"bind failed: resultCode {exc.result_code}: {exc}")
info = session.info
print(f"bind ok: negotiated={info.protocol} protection={info.protection_level.value}", end=" ")
print(f"mutual={info.mutually_authenticated} server={target}")
conn.search(env("SAMBA_DC_BASE_DN"), "(objectClass=user)", attributes=["sAMAccountName"])
accounts = sorted(str(entry.sAMAccountName) for entry in conn.entries)
conn.unbind()
print(f"accounts: {' '.join(accounts)}")
if args.user not in accounts:
    sys.exit(f"the search did not return {args.user}")
print(f"search ok: {len(accounts)} entries")
