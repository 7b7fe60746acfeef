"""What the CURVE default costs on loopback: the handshake and the encryption, next to one default edit.

    python benchmarks/identity_cost.py [--handshakes 200] [--sizes 128 512 1024 2048] [--edits 3] [--no-edit]

Two servers in this process on 127.0.0.1: one without keys (what `serve --insecure-tokens` runs)
and one with CURVE and this run's keys (what `draggan-backend serve` runs by default). Figures:

1. a new connection: connect, ZMTP handshake (CURVE's key exchange, or NULL), ZAP, hello ->
   welcome; a fresh Client each time, as each plug-in run makes one. Median and p95.
2. the wire of one edit at several image sizes: a runner that answers at once with an image of the
   request's size, so only the transport both ways is timed (raw RGB frames, encrypted and
   authenticated per message with CURVE). Medians.
3. one default edit of faces-128 through each server (the plug-in's defaults: up to 200 steps, no
   previews, its radii for 128 px; the model's own samples as photos; a warm, preloaded
   EditRunner; no latent cache), each on a new connection, so the handshake is included. Medians
   of ``--edits`` edits, alternating the two servers.

Figures are printed, never asserted (the machine may be shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from backend import keys as keys_mod  # noqa: E402
from backend.server import Server, ServerConfig  # noqa: E402
from draggan_wire import protocol as P  # noqa: E402
from draggan_wire.client import Client, ClientKeys  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class EchoRunner:
    """Answers every edit at once with an image of the request's size (only the wire is timed)."""

    device = "cpu"

    def models(self) -> list[P.ModelEntry]:
        return [P.ModelEntry("echo", 2048, 2048, True)]

    def memory(self) -> tuple[int, int]:
        return (0, 0)

    def precheck(self, owner: str, request: Any) -> None:
        pass

    def purge(self, owner: str) -> tuple[int, int]:
        return (0, 0)

    def run(self, owner: str, request: Any, emit: Callable[[P.Progress], None],
            should_cancel: Callable[[], bool]) -> P.Result:
        image = request.image
        return P.Result(image=P.Image(image.width, image.height, 3, bytes(image.width * image.height * 3)),
                        points=[(1.0, 1.0)], session_id="s", image_id="i", steps=0)


def servers(runner: Any, keys_dir: Path) -> dict[str, tuple[Server, ClientKeys | None]]:
    keys_mod.init(keys_dir)
    server_keys = keys_mod.load_server_keys(keys_dir)
    plain = Server(ServerConfig(bind="tcp://127.0.0.1:0", heartbeat_s=2.0), runner).start_thread()
    curve = Server(ServerConfig(bind="tcp://127.0.0.1:0", heartbeat_s=2.0, auth="curve",
                                server_public_key=server_keys.public, server_secret_key=server_keys.secret,
                                allowed_clients_dir=str(server_keys.allowed_dir)), runner).start_thread()
    return {"tokens (no keys)": (plain, None), "CURVE (default)": (curve, ClientKeys.from_dir(str(keys_dir)))}


def handshakes(targets: dict[str, tuple[Server, ClientKeys | None]], count: int) -> None:
    print(f"1. new connection + hello -> welcome, {count} each (a fresh Client every time):")
    for name, (server, keys) in targets.items():
        times = []
        for _ in range(count):
            started = time.perf_counter()
            with Client(server.endpoint, keys=keys, connect_timeout_s=5.0, retries=1) as client:
                client.hello()
            times.append(time.perf_counter() - started)
        print(f"   {name:<18} median {statistics.median(times) * 1000:6.2f} ms   p95 "
              f"{percentile(times, 95) * 1000:6.2f} ms")


def transport(targets: dict[str, tuple[Server, ClientKeys | None]], sizes: list[int], repeats: int) -> None:
    print(f"2. one edit's wire (request image + result image, raw RGB), median of {repeats}:")
    for side in sizes:
        image = P.Image(side, side, 3, bytes(side * side * 3))
        request = P.Edit(model="echo", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)], image=image)
        row = []
        for _name, (server, keys) in targets.items():
            with Client(server.endpoint, keys=keys, timeout_s=60) as client:
                client.hello()
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    client.edit(request)
                    times.append(time.perf_counter() - started)
            row.append(statistics.median(times))
        megabytes = 2 * side * side * 3 / 1e6
        print(f"   {side:>4} x {side:<4} ({megabytes:5.1f} MB both ways)   tokens {row[0] * 1000:7.1f} ms   "
              f"CURVE {row[1] * 1000:7.1f} ms   (+{(row[1] - row[0]) * 1000:.1f} ms)")


def default_edits(keys_dir: Path, count: int) -> None:
    import torch

    from backend.edit_runner import EditRunner

    sys.path.insert(0, str(REPO / "gimp_plugin" / "draggan"))
    sys.path.insert(1, str(REPO / "benchmarks"))
    from draggan_core.options import Options, edit_params
    from edit_time import drag_points, pictures

    torch.set_num_threads(max(1, torch.get_num_threads()))
    runner = EditRunner(device="cpu", cache=False)
    runner.preload("faces-128")
    G = runner.pool.get("faces-128")
    photos = pictures(G, count + 1)
    params = P.EditParams(**edit_params(Options(), (G.img_width, G.img_height)))
    targets = servers(runner, keys_dir / "edit")
    print(f"3. one default edit of faces-128 (plug-in defaults: <= {params.max_steps} steps, no previews, "
          f"r1 {params.r1:g}, r2 {params.r2:g}) on a new connection each, {count} per server, CPU "
          f"({torch.get_num_threads()} threads):")
    times: dict[str, list[float]] = {name: [] for name in targets}
    steps: dict[str, list[int]] = {name: [] for name in targets}
    try:
        for i, photo in enumerate(photos):
            height, width = photo.shape[:2]
            handles, goal = drag_points(height, width)
            request = P.Edit(model="faces-128", handles=handles, targets=goal,
                             image=P.Image(width, height, 3, photo.tobytes()), params=params)
            for name, (server, keys) in targets.items():
                started = time.perf_counter()
                with Client(server.endpoint, keys=keys, timeout_s=600) as client:
                    result = client.edit(request)
                if i > 0:  # the first round warms both up
                    times[name].append(time.perf_counter() - started)
                    steps[name].append(result.steps)
        for name in targets:
            print(f"   {name:<18} median {statistics.median(times[name]):6.2f} s   (drag steps "
                  f"{statistics.median(steps[name]):.0f})")
    finally:
        for server, _keys in targets.values():
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--handshakes", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--no-edit", action="store_true", help="skip the faces-128 edits (no torch work)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        targets = servers(EchoRunner(), Path(tmp) / "keys")
        try:
            handshakes(targets, args.handshakes)
            transport(targets, args.sizes, args.repeats)
        finally:
            for server, _keys in targets.values():
                server.stop()
        if not args.no_edit:
            default_edits(Path(tmp), args.edits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
