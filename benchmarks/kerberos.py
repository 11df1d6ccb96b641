"""Kerberos per-message cost: our SecurityContext (pyspnego underneath) against python-gssapi's own wrap/unwrap.

Kerberos records always go through pyspnego (``record_path == "pyspnego"``), which calls python-gssapi. These
scenarios measure what the layers above the GSS library add per message, on the SAME pair of established security
contexts (a throwaway MIT realm, ``scripts/interop/krb5-realm``, client from the user's ticket cache, acceptor
from the service keytab), sealed, both ends (the client protects, the server unprotects), for a 64-byte message and
a full 0xFC00-byte record:

* ``context``: ``SecurityContext.protect`` / ``unprotect`` - the headline value (messages/s);
* ``pyspnego``: pyspnego's ``GSSAPIProxy.wrap`` / ``unwrap`` called directly (what our context module calls);
* ``gssapi``: ``gssapi.raw.wrap`` / ``unwrap`` (python-gssapi's own functions, what pyspnego calls: the floor);
* ``gssapi_highlevel``: python-gssapi's ``SecurityContext.wrap`` / ``unwrap`` methods, for reference.

All four share the native context, so their sequence numbers simply continue one another. The variants run in
interleaved timed batches (the best batch of each is kept), so a change in machine load hits them alike. The
report's ``cost_vs_gssapi`` ratio is our cost per message / gssapi's; ``pyspnego_vs_gssapi`` the same for pyspnego
alone. Skipped, with the reason, when python-gssapi or the MIT KDC is not installed or the realm does not start.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from negotiate_stream import Credentials, ProtectionLevel, SecurityContext
from tests.support.krb5_realm import Realm, RealmUnavailable, mit_realm
from tests.support.krb5_realm import kdc_installed as _kdc_installed

from .config import PING_SIZE, RECORD_PLAINTEXT
from .floors import SMALL_MESSAGES, step_to_completion
from .paths import check_record_path
from .registry import Context, Scenario, Unavailable, require
from .results import Result, measured_result

__all__ = ["KERBEROS_SIZES", "Realm", "kerberos_contexts", "kerberos_scenarios", "message_cost", "throwaway_realm"]

#: The scenario name suffix and message size of each Kerberos scenario.
KERBEROS_SIZES = {"sealed-64B": PING_SIZE, "sealed-0xFC00": RECORD_PLAINTEXT}
#: Seconds the realm helper may take to start (it creates a database, starts krb5kdc and runs kinit).
REALM_START_TIMEOUT = 60.0
#: How the run shares one realm between the Kerberos scenarios (:meth:`Context.shared`).
REALM_KEY = "krb5-realm"
INSTALL_HINT = "scripts/install-interop installs it"
#: Timed batches per variant; the best one is reported.
BATCHES = 3


@contextmanager
def throwaway_realm() -> Iterator[Realm]:
    """Start a throwaway MIT realm (the interop suite's, :func:`tests.support.krb5_realm.mit_realm`) in a
    temporary directory, stop and delete it afterwards.

    Raises :class:`Unavailable` (the scenario is skipped with that reason) when python-gssapi or the MIT KDC is
    not installed, or the realm does not start.
    """
    try:
        require("gssapi")
    except Unavailable as exc:
        raise Unavailable(f"python-gssapi is not installed (the kerberos extra; {INSTALL_HINT}): {exc}") from exc
    if not _kdc_installed():
        raise Unavailable(f"the MIT Kerberos KDC (krb5kdc, Debian krb5-kdc) is not installed; {INSTALL_HINT}")
    with ExitStack() as stack:
        try:
            realm = stack.enter_context(mit_realm("bench-krb5-", timeout=REALM_START_TIMEOUT))
        except RealmUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        yield realm


@contextmanager
def realm_environment(realm: Realm) -> Iterator[None]:
    """The realm's Kerberos variables (``KRB5*``) in this process for the block, the previous values restored.

    Only for the duration of one scenario: the other scenarios must not see this realm's configuration (and its
    ``NTLM_USER_FILE`` export is left out, the NTLM scenarios have their own accounts).
    """
    names = [name for name in realm.env if name.startswith("KRB5")]
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update({name: realm.env[name] for name in names})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def kerberos_contexts(realm: Realm) -> tuple[SecurityContext, SecurityContext]:
    """A client (ticket cache) and an acceptor (keytab) SecurityContext after a Kerberos handshake in memory."""
    common: dict[str, Any] = {"protocol": "kerberos", "protection_level": ProtectionLevel.ENCRYPT_AND_SIGN}
    client = SecurityContext.client(credentials=Credentials(ccache=realm.ccache), **common)
    server = SecurityContext.server(credentials=Credentials(keytab=realm.keytab), **common)
    if not step_to_completion(client, server) or client.negotiated_protocol != "kerberos":
        raise RuntimeError(f"the Kerberos handshake did not complete ({client.negotiated_protocol})")
    return client, server


def _gss_layers(context: SecurityContext) -> tuple[Any, Any]:
    """(pyspnego's GSSAPIProxy, python-gssapi's SecurityContext) under one of our contexts.

    Reads our context's private ``_ctx`` and pyspnego's private ``_context``: a benchmark may look inside, the
    library never hands these out. A layout that differs fails the scenario rather than timing something else.
    """
    gssapi = require("gssapi")
    proxy = getattr(context, "_ctx", None)
    native = getattr(proxy, "_context", None)
    if not isinstance(native, gssapi.SecurityContext):
        raise RuntimeError(f"no python-gssapi context under {context!r} (found {type(native).__name__})")
    return proxy, native


def message_cost(client: SecurityContext, server: SecurityContext, message: bytes) -> dict[str, Callable[[], bool]]:
    """One protect-at-the-client + unprotect-at-the-server of ``message`` per call, through each layer."""
    raw = require("gssapi.raw")
    client_proxy, client_gss = _gss_layers(client)
    server_proxy, server_gss = _gss_layers(server)
    protect, unprotect = client.protect, server.unprotect
    gss_wrap, gss_unwrap = raw.wrap, raw.unwrap

    def context() -> bool:
        return unprotect(protect(message)) == message

    def pyspnego() -> bool:
        result = server_proxy.unwrap(client_proxy.wrap(message, True).data)
        return bool(result.encrypted and result.data == message)

    def gssapi() -> bool:
        result = gss_unwrap(server_gss, gss_wrap(client_gss, message, True).message)
        return bool(result.encrypted and result.message == message)

    def gssapi_highlevel() -> bool:
        result = server_gss.unwrap(client_gss.wrap(message, True).message)
        return bool(result.encrypted and result.message == message)

    return {"context": context, "pyspnego": pyspnego, "gssapi": gssapi, "gssapi_highlevel": gssapi_highlevel}


def _interleaved(count: int, variants: dict[str, Callable[[], bool]]) -> tuple[dict[str, float], float, bool]:
    """Best seconds per call of each variant over :data:`BATCHES` interleaved batches of ``count // BATCHES`` calls;
    also the total seconds of the context variant and whether every call verified."""
    size = max(1, count // BATCHES)
    best = dict.fromkeys(variants, float("inf"))
    total = 0.0
    ok = True
    for _ in range(BATCHES):
        for name, once in variants.items():
            started = time.perf_counter()
            for _ in range(size):
                ok = once() and ok
            seconds = time.perf_counter() - started
            best[name] = min(best[name], seconds / size)
            total += seconds if name == "context" else 0.0
    return best, total, ok


def kerberos_cost(ctx: Context, variant: str) -> Result:
    """Per-message cost of sealed ``KERBEROS_SIZES[variant]``-byte messages through each layer (see the module)."""
    realm = ctx.shared(REALM_KEY, throwaway_realm)
    size = KERBEROS_SIZES[variant]
    with realm_environment(realm):
        client, server = kerberos_contexts(realm)
        message = os.urandom(size)
        variants = message_cost(client, server, message)
        for once in variants.values():  # warm up every layer (and check each one round-trips once)
            if not once():
                raise RuntimeError("a Kerberos message did not round-trip")
        if size <= PING_SIZE:
            count = max(SMALL_MESSAGES, ctx.config.pingpong_rounds * 2)
        else:  # ~0.75 ms per sealed 0xFC00 record and layer here: a quarter of the bulk size is plenty
            count = max(BATCHES, ctx.config.bulk_bytes // (4 * size))
        best, seconds, ok = _interleaved(count, variants)
        path = check_record_path((client, server), "pyspnego")
    figures: dict[str, Any] = {f"{name}_us_per_message": round(cost * 1e6, 2) for name, cost in best.items()}
    figures["us_per_message"] = figures.pop("context_us_per_message")
    figures.update(
        message_bytes=size,
        context_mbps=round(size / best["context"] / 1e6, 1),
        record_path=path,
        note="sealed, protect + unprotect, both ends, one MIT realm",
    )
    rate = 1.0 / best["context"]
    name = f"floor.kerberos.{variant}"
    nbytes = size * max(1, count // BATCHES) * BATCHES
    return measured_result(
        name, "floor", "crypto-kerberos", "sealed", rate, seconds, ok, unit="messages/s", nbytes=nbytes, extra=figures
    )


def kerberos_scenarios() -> list[Scenario]:
    """The Kerberos per-message cost scenarios (64 B and 0xFC00), in report order."""
    return [
        Scenario(
            f"floor.kerberos.{variant}",
            "floor",
            "crypto-kerberos",
            "sealed",
            functools.partial(kerberos_cost, variant=variant),
        )
        for variant in KERBEROS_SIZES
    ]
