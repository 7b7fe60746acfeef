"""CURVE key pairs for the backend and its clients: the one generator (``draggan-backend keys``).

Needs only the standard library and pyzmq (no torch), so ``install.py`` and a laptop without the
backend's heavy dependencies can run it (``python -m backend.cli keys init``).

Layout of the keys folder (``<config>/keys``, see :func:`draggan_wire.client.config_dir`; mode 0700)::

    server.key            the server's public key (copy it to every client machine as server.key)
    server.key_secret     the server's secret key, mode 0600 — the server refuses to start otherwise
    client.key            this machine's client public key (give it to the server's owner)
    client.key_secret     this machine's client secret key, mode 0600
    allowed_clients/      the server's allow-list: one *.key (public) file per client allowed in

Files use ZeroMQ's certificate format, so ``zmq.auth`` reads them.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from draggan_wire.client import config_dir, read_public_key, read_secret_key

ALLOWED_DIR = "allowed_clients"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KeysError(Exception):
    """A key file is missing, malformed or has unsafe permissions (message says what to do)."""


def default_keys_dir() -> Path:
    return Path(config_dir()) / "keys"


def _write(path: Path, text: str, secret: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600 if secret else 0o644)  # never world-readable, not even briefly
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)


def _cert_text(public: bytes, secret: bytes | None, what: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [f"#   DragGAN backend {what}, made by `draggan-backend keys` on {now}",
             "#   ZeroMQ CURVE certificate (ZPL format)" + (": KEEP SECRET" if secret else ""),
             "", "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def create_pair(keys_dir: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.key`` and ``<name>.key_secret`` (0600) in ``keys_dir``; returns their paths.
    Refuses to overwrite existing files unless ``force``."""
    import zmq

    if not _NAME_RE.match(name):
        raise KeysError(f"key name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path, secret_path = keys_dir / f"{name}.key", keys_dir / f"{name}.key_secret"
    if (public_path.exists() or secret_path.exists()) and not force:
        raise KeysError(f"{public_path} already exists; use --force to replace it (clients that pinned the "
                        "old key will need the new one)")
    for p in (public_path, secret_path):
        if p.exists():
            p.unlink()
    public, secret = zmq.curve_keypair()
    _write(public_path, _cert_text(public, None, f"public key '{name}'"), secret=False)
    _write(secret_path, _cert_text(public, secret, f"secret key '{name}'"), secret=True)
    return public_path, secret_path


def allow(keys_dir: Path, public_key_file: Path, name: str | None = None) -> Path:
    """Add a client's public key to the server's allow-list (copies the key only, never a secret)."""
    public = read_public_key(str(public_key_file))
    name = name or public_key_file.name.split(".")[0]
    if not _NAME_RE.match(name):
        raise KeysError(f"client name {name!r}: use letters, digits, '_', '.', '-'")
    folder = keys_dir / ALLOWED_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest = folder / f"{name}.key"
    if dest.exists():
        dest.unlink()
    _write(dest, _cert_text(public, None, f"allowed client '{name}'"), secret=False)
    return dest


def check_secret_file(path: Path) -> None:
    """Refuse secret key files that others can read (POSIX), or that are missing."""
    if not path.is_file():
        raise KeysError(f"secret key {path} is missing; create the keys with `draggan-backend keys init`")
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeysError(f"secret key {path} is readable by other users (mode {mode:04o}); "
                            f"run `chmod 600 {path}` (and consider making a new pair: `draggan-backend keys "
                            "init --force`)")


@dataclass
class ServerKeys:
    public: bytes
    secret: bytes
    allowed_dir: Path


def load_server_keys(keys_dir: Path) -> ServerKeys:
    secret_path = keys_dir / "server.key_secret"
    check_secret_file(secret_path)
    allowed = keys_dir / ALLOWED_DIR
    allowed.mkdir(parents=True, exist_ok=True, mode=0o700)
    return ServerKeys(read_public_key(str(secret_path)), read_secret_key(str(secret_path)), allowed)


def init(keys_dir: Path, server: bool = True, client: bool = True, force: bool = False) -> list[str]:
    """Create the missing pairs (server and/or this machine's client); the local client is allowed
    in by the local server. Returns lines describing what was done."""
    lines = []
    if server and (keys_dir / "server.key").exists() and not (keys_dir / "server.key_secret").exists() \
            and not force:
        raise KeysError(f"{keys_dir / 'server.key'} is another machine's public key, pinned for a remote backend "
                        "(install.py --remote); a backend on this machine needs its own keys folder: pass "
                        "--keys-dir (to serve and to this command)")
    if server:
        if (keys_dir / "server.key_secret").exists() and not force:
            lines.append(f"server key pair exists: {keys_dir / 'server.key'}")
        else:
            pub, sec = create_pair(keys_dir, "server", force=force)
            lines.append(f"created server key pair: {pub} (public), {sec} (secret, 0600)")
    if client:
        if (keys_dir / "client.key_secret").exists() and not force:
            lines.append(f"client key pair exists: {keys_dir / 'client.key'}")
        else:
            pub, sec = create_pair(keys_dir, "client", force=force)
            lines.append(f"created client key pair: {pub} (public), {sec} (secret, 0600)")
    if server and (keys_dir / "client.key").exists():
        dest = allow(keys_dir, keys_dir / "client.key", "local")
        lines.append(f"this machine's client key is allowed: {dest}")
    return lines


def describe(keys_dir: Path) -> list[str]:
    """Human-readable listing of the keys folder (public keys only)."""
    lines = [f"keys folder: {keys_dir}"]
    if not keys_dir.is_dir():
        return lines + ["  (none yet: run `draggan-backend keys init`)"]
    for path in sorted(keys_dir.glob("*.key")):
        secret = path.with_suffix(".key_secret")
        note = ""
        if secret.exists():
            try:
                check_secret_file(secret)
                note = " + secret (0600)"
            except KeysError as exc:
                note = f" + secret: UNSAFE: {exc}"
        lines.append(f"  {path.stem:<16} {read_public_key(str(path)).decode()}{note}")
    allowed = sorted((keys_dir / ALLOWED_DIR).glob("*.key"))
    lines.append(f"allowed clients ({len(allowed)}) in {keys_dir / ALLOWED_DIR}:")
    for path in allowed:
        lines.append(f"  {path.stem:<16} {read_public_key(str(path)).decode()}")
    return lines
