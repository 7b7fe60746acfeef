"""The REAL DragGAN backend for the real-GIMP tests, on 127.0.0.1, CPU, with a tiny random model.

    python tests/gimp/backend_host.py --dir DIR [--inversion-steps N] [--max-seconds S] [--port P]

Writes DIR/tiny.pt (a tiny generator saved with stylegan2.save_generator), serves it as model
'tiny' and, flagged ``alignment: ffhq`` (face alignment, protocol 3, with the real MTCNN), as
'tinyface', with backend.server.Server + backend.edit_runner.EditRunner (the same objects `draggan-backend
serve` runs), writes its endpoint to DIR/endpoint once listening, and appends one JSON line per
finished job to DIR/jobs.jsonl: the request type, the phases the server emitted (so a test can see
whether it inverted), the outcome and the session id (and for aligned results: their progress texts, frame, offset,
size, alignment, note and the SHA-256 of the RGBA bytes sent, so a test can check that GIMP placed
exactly what the server produced). Stops on SIGTERM or after S seconds at most.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--inversion-steps", type=int, default=2,
                    help="cap on every inversion's steps (quick tests); -1 = the presets' own, as served")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--port", type=int, default=0, help="loopback port (0 = any free one); a restart test reuses it")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    import stylegan2
    from backend.edit_runner import EditRunner
    from backend.server import Server, ServerConfig
    from draggan_wire import protocol

    model_path = args.dir / "tiny.pt"
    G = stylegan2.Generator(z_dim=32, w_dim=32, img_resolution=32, img_channels=3, channel_base=256,
                            channel_max=32, mapping_kwargs={"num_layers": 2})
    stylegan2.save_generator(G, model_path)

    runner = EditRunner(models={"tiny": model_path, "tinyface": model_path}, device="cpu", cache=True,
                        cache_dir=None, inversion_steps=None if args.inversion_steps < 0 else args.inversion_steps,
                        alignments={"tinyface": "ffhq"})
    jobs_log = args.dir / "jobs.jsonl"
    lock = threading.Lock()
    real_run = runner.run

    def logged_run(owner, request, emit, should_cancel, should_stop=None):  # observe, then do what serve does
        phases: list[str] = []
        phase_started: dict[str, float] = {}
        texts: list[str] = []
        previews: list[int] = []   # the drag steps that carried a preview

        def observe(progress: protocol.Progress) -> None:
            if progress.preview is not None:
                previews.append(progress.step)
            if progress.text and progress.text not in texts:
                texts.append(progress.text)
            if progress.phase not in phases:
                phases.append(progress.phase)
                phase_started[progress.phase] = round(time.monotonic() - started, 2)
            emit(progress)

        started = time.monotonic()
        entry = {"type": request.TYPE, "owner": owner,
                 "handles": [list(p) for p in getattr(request, "handles", [])],
                 "targets": [list(p) for p in getattr(request, "targets", [])],
                 "mask": getattr(request, "mask", None) is not None}
        image = getattr(request, "image", None)
        if image is not None:
            entry["image_size"] = [image.width, image.height]
        try:
            result = real_run(owner, request, observe, should_cancel, should_stop)
            entry.update(outcome="result", session_id=result.session_id, frame=result.frame, steps=result.steps,
                         stopped=result.stopped, history=result.history,
                         stop_requested=bool(should_stop is not None and should_stop()))
            if result.frame == "crop":
                import hashlib

                entry.update(offset=list(result.offset), size=[result.image.width, result.image.height],
                             alignment=result.alignment, note=result.note, texts=texts,
                             rgba_sha256=hashlib.sha256(result.image.data).hexdigest())
            return result
        except Exception as exc:
            entry.update(outcome=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            entry.update(phases=phases, phase_started=phase_started, seconds=round(time.monotonic() - started, 2),
                         previews=len(previews), ended_at=time.time())
            with lock, open(jobs_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    runner.run = logged_run  # type: ignore[method-assign]
    server = Server(ServerConfig(bind=f"tcp://127.0.0.1:{args.port}", heartbeat_s=1.0), runner)
    server.bind()
    tmp = args.dir / "endpoint.tmp"
    tmp.write_text(server.endpoint)
    os.replace(tmp, args.dir / "endpoint")
    print(f"backend_host: serving 'tiny' and 'tinyface' at {server.endpoint}", flush=True)

    def warm_up() -> None:
        # Load the perceptual network (the slowest first-time cost of an inversion) while GIMP starts;
        # the first edit then finds it ready. Only a cache fill: the edits themselves run as served.
        try:
            from inversion._common import shared_stlpips

            shared_stlpips("vgg", torch.device("cpu"))
        except Exception as exc:  # only a speed-up: the first edit then loads it itself
            print(f"backend_host: warm-up skipped ({exc})", flush=True)

    threading.Thread(target=warm_up, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    timer = threading.Timer(args.max_seconds, server.request_stop)
    timer.daemon = True
    timer.start()
    server.serve_forever(already_bound=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
