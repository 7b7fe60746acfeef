"""Benchmark: the backend's socket loop under hostile input, on 127.0.0.1.

    python benchmarks/server_flood.py [--pings 100] [--flood-seconds 20] [--fuzz 12000]

1. PNG flood: a job runs (a gated fake runner: no model, so only the loop is measured) while a
   second process (testkit/hostile.py flood_png) keeps 10 connections sending edits with a
   2048x2048 Paeth-filtered PNG (28 KB each; ~20 s in a pure-Python decoder). Meanwhile this process
   sends ``--pings`` pings one after the other and prints the round-trip percentiles (the target:
   p99 <= 100 ms on a quiet machine, so a flood does not freeze other users).
2. Fuzz: ``--fuzz`` malformed messages (testkit/fuzz.py's kinds, as tests/backend/test_server_faults.py
   sends them, several seeds) from one DEALER; prints the counts by kind and by error code, and checks that every one
   got a typed error and that the server still answers.
Figures are printed, never asserted (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zmq  # noqa: E402

from draggan_wire import protocol as P  # noqa: E402
from draggan_wire.client import Client, new_token  # noqa: E402
from testkit.fuzz import fuzz_messages, send_and_count_replies  # noqa: E402
from testkit.servers import GatedRunner, fake, start_server  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ping_flood(pings: int, seconds: float) -> None:
    runner = GatedRunner()
    server = start_server(runner, max_peers=64)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        with Client(server.endpoint, timeout_s=60) as busy:
            job = busy.submit(fake())
            while not runner.started.is_set():
                time.sleep(0.01)
            reader_error: list[str] = []

            def follow() -> None:  # the running job's client reads its progress and sends heartbeats
                try:
                    for _ in busy.stream(job):
                        pass
                except Exception as exc:
                    reader_error.append(str(exc))

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            flood = subprocess.Popen([sys.executable, "-m", "testkit.hostile", "flood_png", server.endpoint,
                                      json.dumps({"count": 10, "seconds": seconds})], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, text=True)
            assert flood.stdout is not None and flood.stdout.readline().strip() == "FLOODING"
            ctx = zmq.Context.instance()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.endpoint)
            token = new_token()
            times: list[float] = []
            for i in range(pings):
                started = time.perf_counter()
                sock.send_multipart(P.encode(P.Ping(), f"b{i}", token))
                if not sock.poll(10_000):
                    print(f"ping {i}: no answer within 10 s")
                    continue
                sock.recv_multipart()
                times.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)
            sock.close(0)
            out, _ = flood.communicate(timeout=120)
            sent = json.loads(out.strip().splitlines()[-1])
            runner.release.set()
            reader.join(30)
        ms = [f"{q}={percentile(times, q):.1f}" for q in (50, 95, 99)]
        print(f"PNG flood: {sent['edits_sent']} edits with a {sent['png_bytes']} B 2048x2048 Paeth PNG from a "
              f"second process over {seconds:g} s, a job running")
        print(f"  {len(times)} pings answered of {pings}; round trip ms: {', '.join(ms)}, "
              f"max={max(times):.1f}, mean={statistics.mean(times):.1f}")
        rejected = {k: v for k, v in server.stats.items() if k.startswith("rejected")}
        print(f"  server: busy={server.stats['busy']}, rejected={rejected}, the job ran throughout: {not reader_error}")
    finally:
        runner.release.set()
        server.stop()


def fuzz(count: int) -> None:
    server = start_server(GatedRunner())
    messages: list[tuple[str, list[bytes]]] = []
    seed = 0
    while len(messages) < count:
        messages += fuzz_messages(random.Random(seed))
        seed += 1
    messages = messages[:count]
    started = time.monotonic()
    try:
        sent, codes, no_reply = send_and_count_replies(server.endpoint, messages)
        with Client(server.endpoint, timeout_s=10) as client:
            alive = client.hello().instance == server.instance
    finally:
        server.stop()
    print(f"fuzz: {sum(sent.values())} malformed messages (seeds 0..{seed - 1}) in {time.monotonic() - started:.1f} s; "
          f"no reply: {no_reply}; server still answers hello: {alive}; internal errors: "
          f"{server.stats['rejected:internal']}")
    print("  by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(sent.items())))
    print("  replies by error code: " + ", ".join(f"{c}={n}" for c, n in sorted(codes.items())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=100)
    ap.add_argument("--flood-seconds", type=float, default=20.0)
    ap.add_argument("--fuzz", type=int, default=12000)
    args = ap.parse_args()
    ping_flood(args.pings, args.flood_seconds)
    fuzz(args.fuzz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
