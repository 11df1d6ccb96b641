#!/usr/bin/env python3
"""Capture the MS-NNS wire bytes between a real .NET NegotiateStream client and server.

Starts the .NET peer (scripts/interop/dotnet/run) as an echo server, puts a small TCP proxy in front of it,
runs the .NET client through the proxy, and writes both byte streams, split into frames and annotated, to a
text file:

    scripts/interop/nns_capture.py OUT.txt --protection EncryptAndSign --send hello \\
        --user alice --password 'Passw0rd!' --domain INTEROP [--server-user-file FILE] [--title TEXT]

File format (also described in the file's own header): lines starting with '#' are comments; a line
'[client->server]' or '[server->client]' starts a direction; every other line is the hex of one frame
(handshake message, data record, or raw bytes), in wire order.  Concatenating the hex lines of a direction gives
that direction's full byte stream.

The NTLM user file for the server comes from --server-user-file, or NTLM_USER_FILE, or a temporary one holding
INTEROP:alice:Passw0rd!.  Exit status 0 when the capture was written (even when the .NET peers failed, which is
what a wrong-password capture wants); 1 on a tool failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUN = Path(os.environ.get("NNSPEER_RUN", HERE / "dotnet" / "run"))  # scripts/interop/dotnet/run
MSG_NAMES = {0x14: "HandshakeDone", 0x15: "HandshakeError", 0x16: "HandshakeInProgress"}
NTLM_TYPES = {1: "NEGOTIATE_MESSAGE", 2: "CHALLENGE_MESSAGE", 3: "AUTHENTICATE_MESSAGE"}


# ---------------------------------------------------------------- proxy


class Proxy:
    """Accepts one connection, relays it to the upstream port, records every chunk per direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.data: dict[str, bytearray] = {"c2s": bytearray(), "s2c": bytearray()}
        self.chunks: dict[str, list[int]] = {"c2s": [], "s2c": []}
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _serve(self) -> None:
        try:
            self.listener.settimeout(60)
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=60)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pumps = [
                threading.Thread(target=self._pump, args=(client, server, "c2s")),
                threading.Thread(target=self._pump, args=(server, client, "s2c")),
            ]
            for t in pumps:
                t.start()
            for t in pumps:
                t.join()
            client.close()
            server.close()
        except BaseException as e:  # reported by the caller
            self.error = e
        finally:
            self.listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket, key: str) -> None:
        try:
            while True:
                try:
                    b = src.recv(65536)
                except OSError:  # reset by the peer: treat like EOF
                    b = b""
                if not b:
                    break
                self.data[key] += b
                self.chunks[key].append(len(b))
                dst.sendall(b)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on


# ---------------------------------------------------------------- parsing


def describe_token(tok: bytes) -> str:
    """What a handshake token is: raw NTLMSSP, SPNEGO (init/resp), Kerberos, or other."""
    if not tok:
        return "empty"
    kind = "other"
    if tok.startswith(b"NTLMSSP\x00"):
        kind = "raw NTLMSSP"
    elif tok[0] == 0x60:
        if b"\x06\x06\x2b\x06\x01\x05\x05\x02" in tok[:20]:
            kind = "SPNEGO NegTokenInit (GSS-API 0x60 + OID 1.3.6.1.5.5.2)"
        elif b"\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02" in tok[:20]:
            kind = "raw Kerberos (GSS-API 0x60 + OID 1.2.840.113554.1.2.2)"
        else:
            kind = "GSS-API 0x60 token"
    elif tok[0] == 0xA1:
        kind = "SPNEGO NegTokenResp (0xa1)"
        i = tok.find(b"\x0a\x01")  # negState ENUMERATED
        if 0 <= i < 12:
            kind += " negState=" + {0: "accept-completed", 1: "accept-incomplete", 2: "reject", 3: "request-mic"}.get(
                tok[i + 2], str(tok[i + 2])
            )
    i = tok.find(b"NTLMSSP\x00")
    if i >= 0 and len(tok) >= i + 12:
        t = int.from_bytes(tok[i + 8 : i + 12], "little")
        kind += f"; contains NTLM {NTLM_TYPES.get(t, t)} at offset {i}"
        if t in (1, 2, 3):
            flags_at = {1: 12, 2: 20, 3: 60}[t]
            if len(tok) >= i + flags_at + 4:
                flags = int.from_bytes(tok[i + flags_at : i + flags_at + 4], "little")
                kind += f" flags=0x{flags:08x}"
                kind += " (ESS)" if flags & 0x00080000 else " (no ESS)"
                kind += " seal" if flags & 0x20 else ""
                kind += " sign" if flags & 0x10 else ""
    return kind


def looks_like_header(buf: bytes, pos: int) -> bool:
    return len(buf) - pos >= 5 and buf[pos] in MSG_NAMES and buf[pos + 1] == 1 and buf[pos + 2] == 0


def split_frames(buf: bytes, protection: str) -> list[tuple[bytes, str]]:
    """Split one direction's byte stream into (frame bytes, comment)."""
    out: list[tuple[bytes, str]] = []
    pos = 0
    record_no = 0
    handshake = True
    while pos < len(buf):
        if handshake and looks_like_header(buf, pos):
            mid, size = buf[pos], int.from_bytes(buf[pos + 3 : pos + 5], "big")
            frame = buf[pos : pos + 5 + size]
            payload = frame[5:]
            note = (
                f"handshake {MSG_NAMES[mid]} 0x{mid:02x}, header {frame[:5].hex(' ')}, "
                f"payload {size} bytes (size field big-endian)"
            )
            if len(frame) < 5 + size:
                note += f" TRUNCATED: only {len(payload)} payload bytes on the wire"
            if mid == 0x15:
                note += f"; error payload {payload.hex(' ')}"
                if len(payload) == 8:
                    be = int.from_bytes(payload[4:], "big")
                    le = int.from_bytes(payload[4:], "little")
                    note += f" -> last 4 bytes as BE 0x{be:08x}, as LE 0x{le:08x}"
            else:
                note += "; token: " + describe_token(payload)
            out.append((frame, note))
            pos += len(frame)
            if mid in (0x14, 0x15):
                handshake = False
            continue
        handshake = False
        if protection == "None":
            out.append((buf[pos:], f"raw application bytes ({len(buf) - pos}), no framing: {buf[pos:]!r}"))
            break
        if len(buf) - pos < 4:
            out.append((buf[pos:], "TRUNCATED record length"))
            break
        n = int.from_bytes(buf[pos : pos + 4], "little")
        rec = buf[pos : pos + 4 + n]
        record_no += 1
        body = rec[4:]
        note = f"data record {record_no}: length {rec[:4].hex(' ')} = {n} (uint32 little-endian)"
        if len(body) >= 16 and body[:4] == b"\x01\x00\x00\x00":
            note += (
                f"; NTLM signature version 1, checksum {body[4:12].hex()}, "
                f"seq {int.from_bytes(body[12:16], 'little')} (LE); {len(body) - 16} bytes after the signature"
            )
        elif body[:2] == b"\x05\x04":
            note += f"; RFC 4121 wrap token, flags 0x{body[2]:02x}, seq {int.from_bytes(body[8:16], 'big')}"
        if len(rec) < 4 + n:
            note += f" TRUNCATED ({len(body)} bytes)"
        out.append((rec, note))
        pos += len(rec)
    return out


# ---------------------------------------------------------------- NTLM record decoding (known password)


class NtlmDecoder:
    """Recomputes the NTLM session keys from a captured AUTHENTICATE message and the client's password, then
    decodes each data record under both layouts: sealed (RC4 over the data, then the RC4'd checksum) and sign-only
    (signature + plaintext).  Each layout keeps its own RC4 state, so the note says which one verifies.
    Uses pyspnego's internal NTLM crypto helpers; only for annotating captures."""

    def __init__(self, c2s_frames: list[bytes], password: str) -> None:
        from spnego._ntlm_raw.crypto import hmac_md5, ntowfv1, ntowfv2, rc4k

        auth = next(f[f.find(b"NTLMSSP\x00") :] for f in c2s_frames if b"NTLMSSP\x00\x03\x00\x00\x00" in f)

        def field(off: int) -> bytes:
            n, o = int.from_bytes(auth[off : off + 2], "little"), int.from_bytes(auth[off + 4 : off + 8], "little")
            return auth[o : o + n]

        self.flags = int.from_bytes(auth[60:64], "little")
        user, domain = field(36).decode("utf-16-le"), field(28).decode("utf-16-le")
        base = hmac_md5(ntowfv2(user, ntowfv1(password), domain), field(20)[:16])  # NTLMv2 SessionBaseKey
        self.session_key = rc4k(base, field(52)) if self.flags & 0x40000000 else base  # KEY_EXCH
        self.states: dict[str, dict[str, Any]] = {}

    def note(self, usage: str, record: bytes) -> str:
        from spnego._ntlm_raw.crypto import hmac_md5, rc4, rc4init, sealkey, signkey

        if usage not in self.states:  # fresh handles: the SPNEGO mechListMIC resets the RC4 state (MS-SPNG)
            self.states[usage] = {k: rc4init(sealkey(self.flags, self.session_key, usage)) for k in ("seal", "sign")}
        sk = signkey(self.flags, self.session_key, usage)
        sig, data = record[4:20], record[20:]
        h = self.states[usage]
        plain = rc4(h["seal"], data)
        sealed_ok = rc4(h["seal"], sig[4:12]) == hmac_md5(sk, sig[12:] + plain)[:8]
        signed_ok = rc4(h["sign"], sig[4:12]) == hmac_md5(sk, sig[12:] + data)[:8]
        if sealed_ok:
            return f"decoded: SEALED (RC4), plaintext {plain[:40]!r}, checksum verifies"
        if signed_ok:
            return f"decoded: SIGN-ONLY, plaintext {data[:40]!r} in clear, checksum verifies"
        return "decoded: neither the sealed nor the sign-only layout verifies"


# ---------------------------------------------------------------- driver


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nns-capture.") as tmp:
        return capture(args, Path(tmp))


def capture(args: argparse.Namespace, tmpdir: Path) -> int:
    env = dict(os.environ)
    if args.server_user_file:
        env["NTLM_USER_FILE"] = args.server_user_file
    elif "NTLM_USER_FILE" not in env:
        users = tmpdir / "ntlm_users"
        users.write_text("INTEROP:alice:Passw0rd!\n")
        env["NTLM_USER_FILE"] = str(users)
    port_file = tmpdir / "port"
    server_cmd = [
        str(RUN),
        "server",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--echo",
        "--protection",
        args.server_protection or args.protection,
        "--timeout",
        "30",
    ]
    server = subprocess.Popen(server_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                print(server.communicate()[1].decode(), file=sys.stderr)
                print("nns_capture: the .NET server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        proxy = Proxy(int(port_file.read_text()))
        proxy.start()
        client_cmd = [
            str(RUN),
            "client",
            "--port",
            str(proxy.port),
            "--target",
            args.target,
            "--protection",
            args.protection,
            "--echo",
            "--timeout",
            "30",
        ]
        client_cmd += ["--send-random", str(args.send_random)] if args.send_random else ["--send", args.send]
        if args.user:
            client_cmd += ["--user", args.user, "--password", args.password]
            if args.domain:
                client_cmd += ["--domain", args.domain]
        client = subprocess.run(client_cmd, env=env, capture_output=True, timeout=60, check=False)
        _, server_err = server.communicate(timeout=60)
        proxy.join(10)
        if proxy.error is not None:
            print(f"nns_capture: proxy failed: {proxy.error!r}", file=sys.stderr)
            return 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    def shown(cmd: list[str]) -> str:
        return shlex.join(["dotnet/run", *cmd[1:]]).replace(str(tmpdir), "$TMP")

    lines = [
        f"# {args.title or Path(args.out).stem}",
        "# Captured by scripts/interop/nns_capture.py between a .NET Core 3.1 NegotiateStream client and server",
        "# (scripts/interop/dotnet/NnsPeer.cs on dotnetcore2's runtime, GSSAPI = MIT krb5 + gss-ntlmssp).",
        "# Format: '#' lines are comments; '[client->server]' / '[server->client]' start a direction; every",
        "# other line is the hex of one frame in wire order (joined, they are the direction's whole byte stream).",
        "# The '# ...' line above each frame is an annotation made by nns_capture.py.",
        f"# server: {shown(server_cmd)}",
        f"#   NTLM_USER_FILE content: {Path(env['NTLM_USER_FILE']).read_text().strip()}",
        f"# client: {shown(client_cmd)}",
        f"# client exit status {client.returncode}, server exit status {server.returncode}",
    ]
    for name, err in (("client", client.stderr), ("server", server_err)):
        for ln in err.decode(errors="replace").splitlines():
            lines.append(f"# {name} stderr: {ln}")
    split = {key: split_frames(bytes(proxy.data[key]), args.protection) for key in ("c2s", "s2c")}
    decoder = None
    if args.user and args.protection != "None" and client.returncode == 0:
        try:
            decoder = NtlmDecoder([f for f, _ in split["c2s"]], args.password)
            lines.append(
                f"# NTLM ExportedSessionKey (recomputed from the AUTHENTICATE message and the password): "
                f"{decoder.session_key.hex()}, negotiated flags 0x{decoder.flags:08x}"
            )
        except (ImportError, StopIteration, ValueError):
            decoder = None  # not NTLM (Kerberos), or pyspnego missing: no decoding
    for key, label in (("c2s", "client->server"), ("s2c", "server->client")):
        data = bytes(proxy.data[key])
        lines.append("")
        lines.append(f"# {label}: {len(data)} bytes in total, arrived in TCP reads of {proxy.chunks[key]} bytes")
        lines.append(f"[{label}]")
        for frame, note in split[key]:
            extra = ""
            if decoder is not None and note.startswith("data record"):
                extra = "; " + decoder.note("initiate" if key == "c2s" else "accept", frame)
            lines.append(f"# {note}{extra}")
            lines.append(frame.hex())
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(
        f"nns_capture: wrote {args.out} (client rc {client.returncode}, server rc {server.returncode})", file=sys.stderr
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--protection", default="EncryptAndSign", choices=["None", "Sign", "EncryptAndSign"])
    p.add_argument(
        "--server-protection",
        choices=["None", "Sign", "EncryptAndSign"],
        help="server's level (default: same as --protection)",
    )
    p.add_argument("--send", default="hello")
    p.add_argument("--send-random", type=int, metavar="N", help="send N deterministic bytes instead of --send")
    p.add_argument("--target", default="host/localhost")
    p.add_argument("--user")
    p.add_argument("--password", default="")
    p.add_argument("--domain")
    p.add_argument("--server-user-file")
    p.add_argument("--title")
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
