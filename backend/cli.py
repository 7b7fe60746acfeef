"""``draggan-backend``: run the DragGAN server, manage its CURVE keys, purge its caches, list models.

Heavy imports (torch, the engine) happen only in ``serve``, so ``keys`` works with just pyzmq.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from draggan_wire.client import is_loopback
from draggan_wire.protocol import ALIGNMENTS  # stdlib-only mirror of alignment/align.py's (which imports torch)

DESCRIPTION = """\
DragGAN backend for the GIMP plug-in. GIMP talks to it over ZeroMQ; it runs the inversion and the
drag edits on the GPU (or CPU).

  draggan-backend serve                      serve on tcp://127.0.0.1:5555 (this user only: CURVE keys)
  draggan-backend serve --model tiny=G.pt    also serve a generator file under the name 'tiny'
  draggan-backend serve --model myface=F.pkl --model-align myface=ffhq
                                             ... and align faces for it as FFHQ was aligned
  draggan-backend keys init                  make CURVE keys (serve makes them on first use)
  draggan-backend serve --bind tcp://0.0.0.0:5555   serve the network (CURVE keys required)
  draggan-backend purge                      delete cached latents on disk
  draggan-backend models                     list known models, which are installed, where to get the others
  draggan-backend status                     ask a running server: version, device, models, auth, queue,
                                             how full its stores and connections are

Remote set-up (GIMP on a laptop, backend on a workstation) and the SSH-tunnel alternative:
see docs/remote.md.
"""

SERVE_EPILOG = """\
Models: every installed model in the models folder is served (see `draggan-backend models`);
--model adds files (NAME=PATH, or PATH, named after the file) or checks an installed NAME, and the
first --model is loaded at start. Others load on first use (clients see a 'loading' phase) and the
least recently used are dropped when --max-memory would be exceeded.

Face alignment: --model-align NAME=KIND says how model NAME's training faces were aligned, so that
the plug-in's Face alignment 'auto' aligns photos the same way: ffhq (the FFHQ recipe: eyes and
mouth corners; for FFHQ fine-tunes), faces (the embedded faces-128 model's framing of the same
landmarks) or none. NAME is a --model name, a registered or a registry model; the registry's kinds
(ffhq-512: ffhq, the others: none) are the default, custom files none.

Security: every bind uses CURVE keys, loopback included: only clients whose public key is in the
allow-list folder get in, and the client checks the server's key. On loopback the keys are made on
first use in the per-user config folder (secret files 0600), with this user's client key allowed,
so only this OS user's processes (which can read that folder) can use the server; another user's
process cannot complete the handshake. A network bind needs `draggan-backend keys init` first.
--insecure-tokens serves loopback without keys: any local process, of any user, can connect, and a
client is only the identity token it sends, which costs nothing to make. --insecure does the same
on a network address: anyone who can reach the port can use the GPU and send photos. Never use it
outside a network you fully control.

Privacy: photos sent by a client, their latents and drag sessions are kept (per client, for
--retention seconds) so that follow-up edits are quick; other clients can never reference them.
A client is its CURVE key, or (without CURVE) the secret identity token its requests carry.
--no-cache keeps nothing beyond the edit itself (then 'continue' is not available).

Limits: at most --max-peers connections at once; frames over 2048x2048 RGBA (16 MiB + 1/64) are
dropped by ZeroMQ; waiting edits are served round-robin between clients. When the queue, the
connections or the photo/session stores are full, a new client still gets in: the client holding
the most gives way (never a running edit, nor a client's most recent session while it holds more).
"""

MODELS_DESCRIPTION = """List the models this backend knows: the same table as `python install.py --list-models`
(name, output size, state, source), then, for every model that cannot be downloaded by a script
(state 'manual'), where to get it and the command that registers the file you downloaded.

Install a downloadable model with `python install.py --model NAME`; `draggan-backend serve` serves
every installed model.
"""

STATUS_DESCRIPTION = """Ask a running `draggan-backend serve` how it is: version, protocol, device and memory, models
(loaded or available), authentication mode, the queue (edits running and waiting), and how full its
stores are (photos, drag sessions, the clients holding them, the queue, the connections).

Without --keys-dir the per-user keys folder is used when it holds server.key and client.key_secret
(`serve` makes them on first use), else no keys; with --keys-dir the keys in that folder are used;
--insecure-tokens connects without keys (a server started with --insecure-tokens). Exits 0 when the
server answered, 1 when nothing answered within --timeout seconds (default 3), 2 for a refused key
or a wrong server key.
"""


def _parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 8G, 512M, 1.5GB, 1000000)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "draggan" / "latents"


def _model_args(values: list[str]) -> tuple[dict[str, Path], list[str]]:
    """--model values -> (extra name -> file, names in command-line order)."""
    extra: dict[str, Path] = {}
    order: list[str] = []
    for value in values:
        if "=" in value:
            name, path = value.split("=", 1)
            extra[name] = Path(path).expanduser()
        elif os.sep in value or value.endswith((".pt", ".pkl")) or Path(value).is_file():
            name = Path(value).stem
            extra[name] = Path(value).expanduser()
        else:
            name = value
        order.append(name)
    return extra, order


def _align_arg(text: str) -> tuple[str, str]:
    """A --model-align value NAME=KIND -> (name, kind); KIND one of ALIGNMENTS."""
    name, sep, kind = text.partition("=")
    name, kind = name.strip(), kind.strip().lower()
    accepted = ", ".join(ALIGNMENTS)
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=KIND (KIND: {accepted}; e.g. myface=ffhq)")
    if kind not in ALIGNMENTS:
        raise argparse.ArgumentTypeError(f"unknown alignment {kind!r} for model '{name}'; accepted: {accepted}")
    return name, kind


def _alignment_overrides(pairs: list[tuple[str, str]], model_values: list[str]) -> dict[str, str]:
    """--model-align pairs -> name -> kind (the last one given wins); ValueError for a model name that
    is neither given with --model nor registered nor in the registry."""
    if not pairs:
        return {}
    from . import models

    extra, order = _model_args(model_values)
    known = set(models.REGISTRY) | set(order)
    try:
        known |= {m.name for m in models.available_models(extra)}  # `install.py --model-file` names too
    except models.ModelError:
        pass  # an unreadable registry.json: serve reports it
    unknown = [name for name, _kind in pairs if name not in known]
    if unknown:
        raise ValueError(f"unknown model '{unknown[0]}' (name it with --model NAME=PATH first); known models: "
                         f"{', '.join(sorted(known))}")
    return dict(pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="draggan-backend", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (Ctrl+C stops it cleanly)", epilog=SERVE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--model", action="append", default=[], metavar="NAME|PATH|NAME=PATH",
                       help="a model to serve; repeat for several (the first is loaded at start)")
    serve.add_argument("--model-align", action="append", default=[], type=_align_arg, metavar="NAME=KIND",
                       help=f"face alignment of model NAME's training data, KIND one of {', '.join(ALIGNMENTS)} "
                            "(ffhq for FFHQ fine-tunes); overrides the registry's; repeat per model")
    serve.set_defaults(usage_error=serve.error)  # main() checks --model-align's names after parsing
    serve.add_argument("--device", default="auto", help="auto (GPU when usable), cuda, cuda:1 or cpu")
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555",
                       help="ZeroMQ endpoint to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--max-memory", type=_parse_bytes, default=None, metavar="SIZE",
                       help="budget for loaded model weights, e.g. 8G; least recently used models are dropped")
    serve.add_argument("--queue", type=int, default=4, metavar="N",
                       help="edits that may wait behind the running one; more get 'busy' (default %(default)s)")
    serve.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS",
                       help="heartbeat interval; a client silent for two intervals loses its job (default "
                            "%(default)s)")
    serve.add_argument("--no-cache", action="store_true",
                       help="keep no photos, latents or sessions beyond the edit that made them")
    serve.add_argument("--cache-dir", type=Path, default=None,
                       help=f"latent cache folder (default {default_cache_dir()})")
    serve.add_argument("--cache-size", type=_parse_bytes, default=1 << 30, metavar="SIZE",
                       help="latent cache size limit (default 1G)")
    serve.add_argument("--retention", type=float, default=3600.0, metavar="SECONDS",
                       help="how long a client's photos and sessions are kept in memory (default %(default)s)")
    serve.add_argument("--max-sessions", type=int, default=8, metavar="N",
                       help="drag sessions kept for 'continue' per client; a client evicts only its own "
                            "(default %(default)s)")
    serve.add_argument("--max-sessions-total", type=int, default=32, metavar="N",
                       help="drag sessions kept for all clients together; when full, the client holding the "
                            "most gives one up (default %(default)s)")
    serve.add_argument("--max-peers", type=int, default=16, metavar="N",
                       help="concurrent connections; past it an idle one of the client holding the most is "
                            "closed to let a new one in (default %(default)s; bounds the memory held by "
                            "half-received frames)")
    serve.add_argument("--no-preload", action="store_true",
                       help="do not load the first model and the perceptual networks in the background at start "
                            "(the first edit then waits for them)")
    serve.add_argument("--inversion-steps", type=int, default=None, metavar="N",
                       help="cap the photo projection at N optimiser steps (quick CPU servers, tests); "
                            "default: the presets' own")
    serve.add_argument("--keys-dir", type=Path, default=None,
                       help="CURVE keys folder (default: the per-user config folder's keys/; made on first use "
                            "for a loopback bind)")
    serve.add_argument("--curve", action="store_true",
                       help="require CURVE keys (the default on every address; kept for old scripts)")
    serve.add_argument("--insecure-tokens", action="store_true",
                       help="serve loopback WITHOUT keys: any local process of any user gets in, and identities "
                            "(tokens) cost nothing (see below)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback bind WITHOUT keys (dangerous; see below); on loopback the same "
                            "as --insecure-tokens")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    keys = sub.add_parser("keys", help="create, list and allow CURVE keys (see docs/remote.md)")
    keys.add_argument("--keys-dir", type=Path, default=None, help="keys folder (default: per-user config)")
    # --keys-dir is taken after the action too (`keys init --keys-dir DIR`); SUPPRESS keeps one given before it
    keys_dir_after = argparse.ArgumentParser(add_help=False)
    keys_dir_after.add_argument("--keys-dir", type=Path, default=argparse.SUPPRESS,
                                help="keys folder (default: per-user config)")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    kinit = ksub.add_parser("init", help="create the server and this machine's client key pairs if missing",
                            parents=[keys_dir_after])
    kinit.add_argument("--client-only", action="store_true", help="only the client pair (a laptop)")
    kinit.add_argument("--server-only", action="store_true", help="only the server pair")
    kinit.add_argument("--force", action="store_true", help="replace existing pairs")
    ksub.add_parser("list", help="show the public keys and the allow-list", parents=[keys_dir_after])
    kallow = ksub.add_parser("allow", help="allow a client's public key file (its client.key) in",
                             parents=[keys_dir_after])
    kallow.add_argument("public_key_file", type=Path)
    kallow.add_argument("--name", default=None, help="a name for the client (default: from the file name)")
    knew = ksub.add_parser("new-client", help="make a key pair for another machine and allow it in",
                           parents=[keys_dir_after])
    knew.add_argument("name")

    purge = sub.add_parser("purge", help="delete the cached latents on disk")
    purge.add_argument("--cache-dir", type=Path, default=None, help="latent cache folder")

    sub.add_parser("models", help="list the known models, which are installed, and where to get the others",
                   description=MODELS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)

    status = sub.add_parser("status", help="ask a running server for its version, models, auth and queue",
                            description=STATUS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("--address", default="tcp://127.0.0.1:5555",
                        help="the server's endpoint (default %(default)s)")
    status.add_argument("--keys-dir", type=Path, default=None,
                        help="CURVE keys folder with server.key and client.key_secret (default: the per-user one "
                             "when it has them)")
    status.add_argument("--insecure-tokens", action="store_true",
                        help="connect without keys (a server started with --insecure-tokens or --insecure)")
    status.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help="give up when nothing answers within this time (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            args.model_align = _alignment_overrides(args.model_align, args.model)
        except ValueError as exc:
            args.usage_error(f"argument --model-align: {exc}")
        return cmd_serve(args)
    if args.command == "keys":
        return cmd_keys(args, parser)
    if args.command == "purge":
        return cmd_purge(args)
    if args.command == "models":
        return cmd_models()
    if args.command == "status":
        return cmd_status(args)
    parser.print_help()
    return 2


def _fail(message: str) -> int:
    print(f"draggan-backend: error: {message}", file=sys.stderr)
    return 2


def cmd_keys(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from draggan_wire.protocol import ProtocolError

    from . import keys

    keys_dir = args.keys_dir or keys.default_keys_dir()
    try:
        if args.keys_command == "init":
            for line in keys.init(keys_dir, server=not args.client_only, client=not args.server_only,
                                  force=args.force):
                print(line)
        elif args.keys_command == "allow":
            print(f"allowed: {keys.allow(keys_dir, args.public_key_file, args.name)}")
        elif args.keys_command == "new-client":
            public, secret = keys.create_pair(keys_dir, args.name)
            dest = keys.allow(keys_dir, public, args.name)
            print(f"created {public} and {secret}; allowed in as {dest}")
            print(f"copy {secret} to the client machine as <keys folder>/client.key_secret, together with "
                  f"{keys_dir / 'server.key'} as server.key; then delete {secret} here")
        elif args.keys_command in (None, "list"):
            for line in keys.describe(keys_dir):
                print(line)
        return 0
    except (keys.KeysError, ProtocolError, OSError) as exc:
        return _fail(str(exc))


def cmd_purge(args: argparse.Namespace) -> int:
    import shutil

    folder = args.cache_dir or default_cache_dir()
    if not folder.exists():
        print(f"nothing to purge: {folder} does not exist")
        return 0
    count = sum(1 for p in folder.iterdir() if p.is_file())
    shutil.rmtree(folder)
    print(f"deleted {count} cached latent file(s) in {folder}. A running server keeps photos and sessions in "
          "memory until --retention passes or it restarts; clients purge their own with a 'purge' request.")
    return 0


def cmd_models() -> int:
    from . import models

    infos = models.available_models()
    print("\n".join(models.format_table(infos)))  # the table `install.py --list-models` prints
    manual = [m for m in infos if m.kind == "manual" and not m.installed]
    if manual:
        print("\nmanual downloads (no script may fetch them):")
        for m in manual:
            spec = models.REGISTRY.get(m.name)
            print(f"  {m.name}: {spec.instructions if spec else m.source}")
            if spec is not None and spec.licence:
                print(f"    licence: {spec.licence}")
    print("\ninstall a downloadable model: python install.py --model NAME; every installed model is served")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Connect (CURVE when keys are given), say hello, print what the server reports."""
    from draggan_wire.client import Client, ClientKeys
    from draggan_wire.protocol import ErrorCode, ProtocolError

    timeout = max(0.2, float(args.timeout))
    try:
        if args.insecure_tokens:
            keys = None
        elif args.keys_dir is not None:
            keys = ClientKeys.from_dir(str(args.keys_dir))
        else:
            keys = ClientKeys.for_endpoint(args.address)
        with Client(args.address, keys=keys, timeout_s=timeout, connect_timeout_s=timeout, retries=1,
                    client_name="draggan-backend-status") as client:
            welcome = client.hello()
    except ProtocolError as exc:
        print(f"draggan-backend status: {exc.message}", file=sys.stderr)
        return 2 if exc.code == ErrorCode.AUTH else 1
    models = ", ".join(f"{m.name} ({m.width}x{m.height}, {'loaded' if m.loaded else 'available'}"
                       f"{_alignment_text(m.alignment)})" for m in welcome.models) or "none"
    limits = welcome.limits
    lines = [f"server   : DragGAN backend {welcome.server} (protocol {welcome.protocol}) at {args.address}",
             f"instance : {welcome.instance}",
             f"device   : {welcome.device} (memory {_human(welcome.memory_used)} used of "
             f"{_human(welcome.memory_total)})",
             f"models   : {models}",
             f"auth     : {welcome.auth}" + (" (CURVE keys: only allowed keys get in)" if welcome.auth == "curve"
                                             else " (INSECURE identity tokens: --insecure-tokens or --insecure; "
                                                  "any process that reaches it gets in)"),
             f"cache    : {'on' if welcome.cache else 'off (--no-cache)'}",
             f"queue    : {welcome.running} running, {welcome.waiting} waiting (limit {welcome.queue_limit})",
             f"limits   : {limits.get('max_peers', '?')} connections, images up to "
             f"{limits.get('max_image_side', '?')} px a side, frames up to {limits.get('max_frame_bytes', '?')} "
             "bytes",
             *_stores_lines(welcome.stores)]
    print("\n".join(lines))
    return 0


def _stores_lines(stores: dict[str, int]) -> list[str]:
    """``status``'s lines on how full the server is (nothing from a server that does not say)."""
    if not stores:
        return []

    def fill(name: str, what: str) -> str:
        held, cap = stores.get(name, 0), stores.get(f"{name}_max", 0)
        share = f" ({100 * held / cap:.0f}% full)" if cap else ""
        return f"{held} of {cap} {what}{share}" if cap else f"{held} {what}"

    lines = []
    if "photos_max" in stores or "sessions_max" in stores:
        lines.append(f"stores   : {fill('photos', 'photos')}, {fill('sessions', 'drag sessions')}, held by "
                     f"{stores.get('owners', 0)} client(s); {stores.get('evicted_for_room', 0)} evicted to make room")
    lines.append(f"waiting  : {fill('queue', 'queue places')}; {stores.get('bumped', 0)} edit(s) gave their place "
                 "to another client")
    lines.append(f"peers    : {fill('peers', 'connections')} of {stores.get('connected_owners', 0)} client(s); "
                 f"{stores.get('shed', 0)} closed to make room; {stores.get('known_owners', 0)} client(s) seen")
    return lines


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _alignment_text(kind: str) -> str:
    return "" if kind == "none" else f", {kind} alignment"


def _human(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GB" if nbytes else "unknown"


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    log = logging.getLogger("draggan.backend")
    from . import keys as keys_mod

    loopback = is_loopback(args.bind)
    if args.curve and (args.insecure_tokens or args.insecure):
        return _fail("--curve and --insecure-tokens/--insecure contradict each other")
    if args.insecure_tokens and not loopback and not args.insecure:
        return _fail(f"--insecure-tokens serves loopback only; {args.bind} is a network address (that needs "
                     "CURVE keys, or --insecure, which is worse)")
    # Keys on every bind: without them an identity is a token any local process (of any user) mints.
    tokens = args.insecure_tokens or args.insecure
    auth = "none" if tokens else "curve"
    server_keys = None
    keys_dir = args.keys_dir or keys_mod.default_keys_dir()
    made_keys: list[str] = []
    bar = "!" * 100
    if tokens and not loopback:
        log.warning("\n%s\n!! --insecure: serving %s WITHOUT authentication or encryption. Anyone who can "
                    "reach this port can use\n!! the GPU and send photos, and photos travel in clear text. "
                    "Use CURVE keys (docs/remote.md) instead.\n%s", bar, args.bind, bar)
    elif tokens:
        log.warning("\n%s\n!! --insecure-tokens: serving %s WITHOUT keys. Any process of any user on this "
                    "machine can connect and\n!! make itself as many identities as it likes (fair limits still "
                    "apply, see docs/remote.md).\n%s", bar, args.bind, bar)
    else:
        try:
            if loopback and not (keys_dir / "server.key_secret").exists():
                # first serve: this user's keys (server pair + a client pair on the allow-list)
                made_keys = keys_mod.init(keys_dir)
            server_keys = keys_mod.load_server_keys(keys_dir)
        except (keys_mod.KeysError, OSError) as exc:
            why = "binding to a non-loopback address requires CURVE keys" if not loopback else "CURVE keys"
            return _fail(f"{why}: {exc}. Make keys with `draggan-backend keys init` (see docs/remote.md), "
                         "or bind to tcp://127.0.0.1 and use an SSH tunnel")
    from draggan_wire.protocol import PROTOCOL_VERSION

    from .edit_runner import EditRunner
    from .server import SERVER_VERSION, Server, ServerConfig

    extra, order = _model_args(args.model)
    try:
        runner = EditRunner(models=extra, device=args.device, max_memory=args.max_memory,
                            cache=not args.no_cache, cache_dir=None if args.no_cache else
                            (args.cache_dir or default_cache_dir()), cache_bytes=args.cache_size,
                            max_sessions=args.max_sessions, retention_s=args.retention,
                            max_sessions_total=args.max_sessions_total,
                            inversion_steps=args.inversion_steps,
                            alignments=dict(args.model_align))
        for name in order:
            runner.pool.check(name)
        runner.pool.probe_sizes()
        if order:
            runner.pool.get(order[0])
    except Exception as exc:  # a bad model file, device or folder: say so and stop
        return _fail(str(exc))
    if not runner.pool.installed_names():
        return _fail("no model to serve: install one (`python install.py --model NAME`) or pass "
                     "--model NAME=PATH")
    config = ServerConfig(bind=args.bind, heartbeat_s=args.heartbeat, queue_limit=args.queue, auth=auth,
                          server_public_key=server_keys.public if server_keys else None,
                          server_secret_key=server_keys.secret if server_keys else None,
                          allowed_clients_dir=str(server_keys.allowed_dir) if server_keys else None,
                          cache=not args.no_cache, max_peers=args.max_peers)
    server = Server(config, runner)
    try:
        server.bind()
    except Exception as exc:
        return _fail(f"cannot listen on {args.bind}: {exc}")
    total, _used = runner.memory()
    models_text = ", ".join(f"{m.name} ({m.width}x{m.height}{', loaded' if m.loaded else ''}"
                            f"{_alignment_text(m.alignment)})" for m in runner.models())
    if auth == "curve":
        assert server_keys is not None
        allowed = len(list(Path(server_keys.allowed_dir).glob("*.key")))
        auth_text = (f"CURVE, server key {server_keys.public.decode()}, {allowed} allowed client key(s) in "
                     f"{server_keys.allowed_dir}" + (" (keys made now)" if made_keys else ""))
    else:
        auth_text = ("NONE (--insecure-tokens): identity tokens only, any local process of any user gets in"
                     if loopback else "NONE (--insecure)")
    banner = [f"DragGAN backend {SERVER_VERSION} (protocol {PROTOCOL_VERSION})",
              f"  endpoint : {server.endpoint}",
              f"  device   : {runner.device} (memory {_human(total)})",
              f"  models   : {models_text}",
              f"  auth     : {auth_text}",
              "  cache    : " + ("off (--no-cache)" if args.no_cache else
                                 f"latents in {args.cache_dir or default_cache_dir()}, photos/sessions kept "
                                 f"{args.retention:g} s"),
              f"  queue    : {args.queue} waiting at most (served round-robin between clients); heartbeat "
              f"{args.heartbeat:g} s; at most {args.max_peers} connections",
              f"  stores   : {runner.sessions.max_items} drag sessions and {runner.images.max_items} photos per "
              f"client, {runner.sessions.max_total} and {runner.images.max_total} for all (when full, the client "
              "holding the most gives way)",
              "ready (Ctrl+C to stop)"]

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        server.request_stop()

    signal.signal(signal.SIGINT, on_signal)  # before "ready": a stop right after it is clean too
    signal.signal(signal.SIGTERM, on_signal)
    print("\n".join(banner), file=sys.stderr, flush=True)
    preload = None
    if not args.no_preload:
        import threading

        # in the background: the server answers hello/status at once, the first edit waits less
        preload = threading.Thread(target=runner.preload, args=(order[0] if order else None,),
                                   name="draggan-preload", daemon=True)
        preload.start()
    server.serve_forever(already_bound=True)
    if preload is not None:
        # a stop right after start: let the loading finish before the interpreter shuts down
        # (torch aborts the process when it is torn down under a thread still inside it)
        preload.join(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
