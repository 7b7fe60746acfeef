"""The model registry: which generators exist, where they live, and how to download them.

Standard library only and torch-free at import, so `install.py --list-models` (which runs
`python -m backend.models list` in the venv) is cheap.

* The embedded default, ``faces-128``, ships with the code (``backend/data/faces-128.pt``).
* The official DragGAN download list (its ``scripts/download_models.json``) can be downloaded
  into the per-user models folder: streaming, with a progress line, resumable (HTTP Range), moved
  into place atomically, licence printed first.
* StyleGAN-Human and LHQ sit behind Google Drive pages that a script cannot fetch reliably: they
  are manual downloads, registered with ``add PATH NAME`` (``install.py --model-file PATH NAME``).
* Checksums: upstream publishes none and none could be established from here, so ``sha256`` is
  empty for every entry and the hash is recorded on first download or registration ("trust on
  first use") in ``registry.json`` and verified afterwards (``verify``; re-downloads compare).

Command line: ``python -m backend.models {list,download,add,verify,remove,path} ...``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from draggan_util.hashing import sha256_file

DEFAULT_MODEL = "faces-128"
EMBEDDED_MODEL_FILE = Path(__file__).resolve().parent / "data" / "faces-128.pt"
MODELS_DIR_ENV = "DRAGGAN_MODELS_DIR"
REGISTRY_FILE = "registry.json"       # inside the models folder: name -> file, sha256, size, source
PART_SUFFIX = ".part"                 # a download in progress; never mistaken for a model
CHUNK_BYTES = 1 << 20
USER_AGENT = "draggan-gimp-models/1"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Licence summaries (not legal advice: each says where the full terms are).
_LICENCE_OURS = ("MIT (this project's own licence): trained by this project's training/ code on a "
                 "procedural data set it generates; no third-party images.")
_LICENCE_SELF_DISTILLED = (
    "Self-Distilled StyleGAN (Mokady et al., SIGGRAPH 2022, Google Research), trained on photos "
    "collected from the Internet. No licence file is published with the download; read the terms at "
    "https://self-distilled-stylegan.github.io/ before any use beyond personal research.")
_LICENCE_NVIDIA_ADA = (
    "NVIDIA Source Code License-NC (StyleGAN2-ADA): non-commercial research and evaluation use only. "
    "Full text: https://nvlabs.github.io/stylegan2-ada-pytorch/license.html")
_LICENCE_NVIDIA_TF = (
    "NVIDIA Source Code License-NC (StyleGAN2, TensorFlow release): non-commercial research and "
    "evaluation use only. Full text: https://nvlabs.github.io/stylegan2/license.html")


@dataclass(frozen=True)
class DragDefaults:
    """The drag settings the server uses on a model (backend.engine DragParams fields of the same
    names): larger first steps (``lr_boost``, ``lr_half_life``; 1 = the official constant lr), the stop
    distance in the model's pixels (0 = the official ``max(2 / 512 * H, 2)``) and the mask weight used
    when the request leaves it to the model (``lambda_mask``; 20 = the paper's). The defaults are the
    official code's; a model's own values are measured on it (backend/data/faces-128.md)."""

    lr_boost: float = 1.0
    lr_half_life: float = 20.0
    stop_distance: float = 0.0
    lambda_mask: float = 20.0


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the built-in registry.

    width x height: the generator's output in pixels (x then y). ``kind``: "embedded" (ships with
    the code), "download" (``url``), or "manual" (``instructions`` say where to get it).
    ``sha256``: a shipped hash, empty when none is known (then trust on first use).
    """

    name: str
    filename: str
    width: int
    height: int
    kind: str
    licence: str
    source: str
    url: str = ""
    sha256: str = ""
    instructions: str = ""
    notes: str = ""
    # alignment/align.py ALIGNMENTS: "ffhq" = the FFHQ recipe's quad at the model's size; "faces" = that
    # quad onto the procedural faces' average face
    alignment: str = "none"
    # the server's drag settings on this model beyond the user's (DragDefaults: the official ones unless
    # measured on that model, never guessed for the official checkpoints)
    drag: DragDefaults = DragDefaults()
    # protocol FRAMINGS: "whole" = the model draws whole subjects framed as in its training data, so the
    # plug-in's automatic crop sends the whole layer, not a model-sized crop around the points
    framing: str = "any"
    # pivotal tuning when the request leaves it to the model (protocol 4 ``params.pti`` absent)
    pti: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What `available_models` reports for one model. width x height in pixels (0 = not known
    until the file is loaded, for a custom registered model)."""

    name: str
    path: Path | None
    installed: bool
    width: int
    height: int
    licence: str
    source: str
    kind: str = "download"
    notes: str = ""
    alignment: str = "none"


# --------------------------------------------------------------------------------------------
# "Poor inversion" thresholds, per model (sent to the plug-in in the model's metadata)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoorInversion:
    """A reconstruction is "poor" (the picture is far from what the model can draw) when its
    ST-LPIPS (VGG, shift-tolerant) is above ``stlpips`` or its PSNR below ``psnr_db``."""

    stlpips: float
    psnr_db: float
    source: str


# Official models: not calibrated here (no GPU, no downloads on our machines). The values the
# plug-in always used, typical of GAN inversions of in-domain photos at 256-1024 px.
DEFAULT_POOR_INVERSION = PoorInversion(0.35, 16.0, "default for official models (not calibrated)")
CALIBRATION_SUFFIX = ".calibration.json"   # backend/data/<name>.calibration.json, made by
                                           # benchmarks/calibrate_poor_inversion.py


def calibration_file(name: str) -> Path:
    return EMBEDDED_MODEL_FILE.parent / f"{name}{CALIBRATION_SUFFIX}"


def poor_inversion(name: str) -> PoorInversion:
    """The thresholds for model `name`: its committed calibration (the embedded default model has
    one, measured on its own samples and renders against out-of-domain photos), else the default."""
    try:
        data = json.loads(calibration_file(name).read_text(encoding="utf-8"))
        return PoorInversion(float(data["poor_stlpips"]), float(data["poor_psnr_db"]),
                             f"calibrated ({calibration_file(name).name}, {data.get('date', '?')})")
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_POOR_INVERSION


def model_framing(name: str) -> str:
    """What model `name` draws, for clients' automatic crop (protocol FRAMINGS): its registry entry's,
    "any" for models without one."""
    spec = REGISTRY.get(name)
    return "any" if spec is None else spec.framing


def model_alignment(name: str, option: str = "auto", overrides: Mapping[str, str] | None = None) -> str:
    """The alignment to use for model `name` under the user's option: "off" -> "none"; "auto" -> the
    server's override for `name` when `overrides` (name -> kind: `draggan-backend serve --model-align
    NAME=KIND`) has one, else the registry entry's alignment ("none" for models without one, custom
    files included)."""
    if option not in ("auto", "off"):
        raise ValueError(f"align option must be 'auto' or 'off', got {option!r}")
    if option == "off":
        return "none"
    if overrides and name in overrides:
        return overrides[name]
    spec = REGISTRY.get(name)
    return "none" if spec is None else spec.alignment


def model_drag_defaults(name: str) -> DragDefaults:
    """The drag settings of model `name`: its registry entry's, the official ones for models without
    one (custom files included)."""
    spec = REGISTRY.get(name)
    return DragDefaults() if spec is None else spec.drag


def model_pti(name: str) -> bool:
    """Whether model `name` is pivotally tuned when the request leaves it to the model (False for
    models without a registry entry)."""
    spec = REGISTRY.get(name)
    return False if spec is None else spec.pti


class ModelError(Exception):
    """Base class for registry and download errors (the message says what to do)."""


class UnknownModelError(ModelError, LookupError):
    """The name is not in the registry, or the model is not installed yet."""


class DownloadError(ModelError):
    """The download failed (HTTP error, connection lost too often, disk)."""


class ChecksumMismatchError(ModelError):
    """The file's sha256 is not the shipped or recorded one."""


class DownloadCancelled(ModelError):
    """should_cancel() returned True; the partial download is kept for a later resume."""


def _sd(name: str, stem: str, size: int, animal: str) -> ModelSpec:
    return ModelSpec(
        name=name, filename=f"stylegan2_{stem}_pytorch.pkl", width=size, height=size, kind="download",
        licence=_LICENCE_SELF_DISTILLED, source=f"Self-Distilled StyleGAN, {animal} ({size}x{size})",
        url=f"https://storage.googleapis.com/self-distilled-stylegan/{stem}_pytorch.pkl")


_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
# Upstream lists these as http://; the CloudFront distribution serves the same files over https.
_CLOUDFRONT = "https://d36zk2xti64re0.cloudfront.net/stylegan2/networks/"

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec(
        name=DEFAULT_MODEL, filename="faces-128.pt", width=128, height=128, kind="embedded",
        licence=_LICENCE_OURS, source="embedded: backend/data/faces-128.pt",
        notes="edits only its own procedural domain (synthetic faces); real photos need an official model",
        # 16x first steps, half-life 20, stop within 1 px: on its fidelity pairs drags end nearer
        # their targets in far fewer steps than with the official constant lr and 2 px stop; mask
        # weight 5: masked one-point drags stall in 7 of 30 pairs instead of 12 at the paper's 20
        # (training/docs/faces-128-history.md, sessions 13 and 14)
        drag=DragDefaults(lr_boost=16.0, lr_half_life=20.0, stop_distance=1.0, lambda_mask=5.0),
        # a whole face per picture: a crop around the points of a larger drawing shows part of a face
        # (benchmarks/crop_framing.py, 4 drawings of 256 px: ST-LPIPS 0.31-0.39 for a 128 px crop at the
        # mouth, 0.04-0.05 for the whole drawing)
        framing="whole",
        # its inversion of a picture it did not draw misplaces local features by about 3 px (more than
        # a local drag moves them) and changes colours; PTI brings drags 0.9-1.5 px from the exact
        # answers in about 21 s on 2 cores (docs/paired-faces-128.md)
        pti=True),
    _sd("lions-512", "lions_512", 512, "lions"),
    _sd("dogs-1024", "dogs_1024", 1024, "dogs"),
    _sd("horses-256", "horses_256", 256, "horses"),
    _sd("elephants-512", "elephants_512", 512, "elephants"),
    ModelSpec(
        name="ffhq-512", filename="stylegan2-ffhq-512x512.pkl", width=512, height=512, kind="download",
        licence=_LICENCE_NVIDIA_ADA + " Training images: FFHQ (Flickr), CC BY-NC-SA 4.0.",
        source="NVIDIA StyleGAN2 (ADA, PyTorch), human faces FFHQ 512x512", url=_NGC + "stylegan2-ffhq-512x512.pkl",
        alignment="ffhq"),
    ModelSpec(
        name="afhqcat-512", filename="stylegan2-afhqcat-512x512.pkl", width=512, height=512, kind="download",
        licence=_LICENCE_NVIDIA_ADA + " Training images: AFHQ cats, CC BY-NC 4.0.",
        source="NVIDIA StyleGAN2 (ADA, PyTorch), cat faces AFHQ 512x512",
        url=_NGC + "stylegan2-afhqcat-512x512.pkl"),
    ModelSpec(
        name="car-512", filename="stylegan2-car-config-f.pkl", width=512, height=512, kind="download",
        licence=_LICENCE_NVIDIA_TF + " Training images: LSUN Car.",
        source="NVIDIA StyleGAN2 config-f (TensorFlow pickle), LSUN cars",
        url=_CLOUDFRONT + "stylegan2-car-config-f.pkl",
        notes=("the generator outputs 512x512, but LSUN Car was trained as 512x384 pictures centred "
               "between black bars: the car fills rows 64..447 (x 0..511); crop edits to that band")),
    ModelSpec(
        name="cat-256", filename="stylegan2-cat-config-f.pkl", width=256, height=256, kind="download",
        licence=_LICENCE_NVIDIA_TF + " Training images: LSUN Cat.",
        source="NVIDIA StyleGAN2 config-f (TensorFlow pickle), LSUN cats 256x256",
        url=_CLOUDFRONT + "stylegan2-cat-config-f.pkl"),
    ModelSpec(
        name="human-512", filename="stylegan_human_v2_512.pkl", width=256, height=512, kind="manual",
        licence=("StyleGAN-Human (Fu et al., ECCV 2022): research use only; terms at "
                 "https://github.com/stylegan-human/StyleGAN-Human"),
        source="StyleGAN-Human v2, full-body people, 256 wide x 512 high",
        instructions=("Google Drive does not allow scripted downloads. Open "
                      "https://drive.google.com/file/d/1dlFEHbu-WzQWJl7nBBZYcTyo000H9hVm/view in a browser "
                      "(link from the DragGAN README), download the .pkl, then run "
                      "`python install.py --model-file PATH human-512`.")),
    ModelSpec(
        name="lhq-256", filename="stylegan2_lhq_256.pkl", width=256, height=256, kind="manual",
        licence="Landscapes HQ (LHQ) StyleGAN2 from the DragGAN README: terms unknown; check the source before use",
        source="StyleGAN2 trained on Landscapes HQ, 256x256",
        instructions=("Google Drive does not allow scripted downloads. Open "
                      "https://drive.google.com/file/d/16twEf0T9QINAEoMsWefoWiyhcTd-aiWc/view in a browser "
                      "(link from the DragGAN README), download the .pkl, then run "
                      "`python install.py --model-file PATH lhq-256`.")),
]}


# --------------------------------------------------------------------------------------------
# The models folder and its registry.json
# --------------------------------------------------------------------------------------------

def default_models_dir(platform: str = sys.platform, env: Mapping[str, str] | None = None,
                       home: Path | None = None) -> Path:
    """The per-user models folder for `platform` (a pure function of its arguments).

    Linux: $XDG_DATA_HOME/draggan/models (~/.local/share/draggan/models); Windows:
    %LOCALAPPDATA%\\draggan\\models; macOS: ~/Library/Application Support/draggan/models.
    $DRAGGAN_MODELS_DIR overrides all of them.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if env.get(MODELS_DIR_ENV):
        return Path(env[MODELS_DIR_ENV]).expanduser()
    if platform.startswith("win"):
        base = Path(env["LOCALAPPDATA"]) if env.get("LOCALAPPDATA") else home / "AppData" / "Local"
    elif platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else home / ".local" / "share"
    return base / "draggan" / "models"


def models_dir() -> Path:
    """The per-user models folder ($DRAGGAN_MODELS_DIR overrides); not created here."""
    return default_models_dir()


def _read_registry(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is unreadable ({exc}); fix or delete it (it only records hashes)") from exc
    entries = data.get("models", {}) if isinstance(data, dict) else {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


def _write_registry(folder: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"version": 1, "models": dict(sorted(entries.items()))}, f, indent=1)
        f.write("\n")
    os.replace(tmp, folder / REGISTRY_FILE)


def _record(folder: Path, name: str, filename: str, sha256: str, size: int, source: str) -> None:
    entries = _read_registry(folder)
    entries[name] = {"file": filename, "sha256": sha256, "size": size, "source": source,
                     "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_registry(folder, entries)


def _model_path(name: str, folder: Path, recorded: Mapping[str, Mapping[str, Any]]) -> Path | None:
    spec = REGISTRY.get(name)
    if spec is not None and spec.kind == "embedded":
        return EMBEDDED_MODEL_FILE
    entry = recorded.get(name)
    if entry is not None and isinstance(entry.get("file"), str):
        return folder / Path(entry["file"]).name
    if spec is not None:
        return folder / spec.filename
    return None


def available_models(extra: Mapping[str, Path] | None = None, folder: Path | None = None) -> list[ModelInfo]:
    """Every model this installation knows: the built-in registry, then models registered with
    `add` (custom names), then `extra` (name -> file, e.g. given to the server on its command line).
    `installed` says whether the file is there now. Sorted as listed; the default comes first."""
    folder = models_dir() if folder is None else folder
    recorded = _read_registry(folder)
    out: list[ModelInfo] = []
    for spec in REGISTRY.values():
        path = _model_path(spec.name, folder, recorded)
        out.append(ModelInfo(name=spec.name, path=path, installed=bool(path and path.is_file()),
                             width=spec.width, height=spec.height, licence=spec.licence,
                             source=spec.url or spec.source, kind=spec.kind,
                             notes=spec.notes or spec.instructions, alignment=spec.alignment))
    for name, entry in sorted(recorded.items()):
        if name in REGISTRY:
            continue
        path = folder / Path(str(entry.get("file", ""))).name
        out.append(ModelInfo(name=name, path=path, installed=path.is_file(), width=0, height=0,
                             licence="registered by the user: see its source", kind="file",
                             source=str(entry.get("source", "")), notes="size known once loaded"))
    for name, extra_path in (extra or {}).items():
        p = Path(extra_path)
        out = [m for m in out if m.name != name]
        out.append(ModelInfo(name=name, path=p, installed=p.is_file(), width=0, height=0,
                             licence="given on the command line: see its source", source=str(p), kind="file"))
    return out


def resolve_model(name: str, extra: Mapping[str, Path] | None = None, folder: Path | None = None,
                  verify: bool = False) -> Path:
    """The file of model `name`, or UnknownModelError saying how to get it.

    Always checks that the file's size is the recorded one (cheap); `verify=True` also checks
    its sha256 against the shipped or recorded hash (seconds for a 1 GB file).
    """
    if extra and name in extra:
        p = Path(extra[name])
        if not p.is_file():
            raise UnknownModelError(f"model '{name}' points at {p}, which does not exist")
        return p
    folder = models_dir() if folder is None else folder
    recorded = _read_registry(folder)
    spec = REGISTRY.get(name)
    if spec is None and name not in recorded:
        known = ", ".join(sorted(set(REGISTRY) | set(recorded)))
        raise UnknownModelError(f"unknown model '{name}'; known models: {known} "
                                f"(`python install.py --list-models` lists them)")
    path = _model_path(name, folder, recorded)
    assert path is not None
    if not path.is_file():
        if spec is not None and spec.kind == "embedded":
            raise UnknownModelError(f"the embedded default model file {path} is missing: is this a complete "
                                    "clone? (`git status backend/data`)")
        if spec is not None and spec.kind == "manual":
            raise UnknownModelError(f"model '{name}' is not installed; it is a manual download: {spec.instructions}")
        raise UnknownModelError(f"model '{name}' is not installed; run `python install.py --model {name}`")
    entry = recorded.get(name)
    if entry is not None and isinstance(entry.get("size"), int) and path.stat().st_size != entry["size"]:
        raise ChecksumMismatchError(
            f"model file {path} has {path.stat().st_size} bytes but {entry['size']} were recorded when it was "
            f"installed: it changed or is truncated; delete it and run `python install.py --model {name}`")
    if verify:
        verify_model(name, folder=folder)
    return path


def expected_sha256(name: str, folder: Path | None = None) -> str:
    """The shipped hash of `name`, else the one recorded on first use, else ""."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.sha256:
        return spec.sha256
    folder = models_dir() if folder is None else folder
    return str(_read_registry(folder).get(name, {}).get("sha256", ""))


def verify_model(name: str, folder: Path | None = None) -> str:
    """Check the installed file of `name` against its shipped/recorded sha256.

    Returns a line saying what was checked; raises ChecksumMismatchError on a mismatch. The
    embedded default is part of the code (git checks it); a model without any hash gets its hash
    recorded now (trust on first use)."""
    folder = models_dir() if folder is None else folder
    path = resolve_model(name, folder=folder)
    digest = sha256_file(path)
    want = expected_sha256(name, folder)
    if not want:
        if REGISTRY.get(name, None) is not None and REGISTRY[name].kind == "embedded":
            return f"{name}: sha256 {digest} (embedded with the code)"
        spec = REGISTRY.get(name)
        _record(folder, name, path.name, digest, path.stat().st_size, spec.url if spec else str(path))
        return f"{name}: no hash was known; recorded sha256 {digest} (trust on first use)"
    if digest != want:
        raise ChecksumMismatchError(f"model file {path} has sha256 {digest}, expected {want}: it is corrupt or "
                                    f"was replaced; delete it and run `python install.py --model {name}`")
    return f"{name}: sha256 {digest} OK"


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

class _ProgressLine:
    """A one-line progress display on a stream: '  ffhq-512: 120.0/363.9 MB  33%  8.1 MB/s'."""

    def __init__(self, label: str, stream: Any = None, every_s: float = 0.5) -> None:
        self.label, self.stream, self.every_s = label, stream, every_s
        self.start = time.monotonic()
        self.last = 0.0
        self.start_bytes: int | None = None

    def __call__(self, done: int, total: int, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if self.start_bytes is None:
            self.start_bytes = done
        if not final and now - self.last < self.every_s:
            return
        self.last = now
        rate = (done - self.start_bytes) / max(now - self.start, 1e-6) / 1e6
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB {100 * done / total:3.0f}%" if total else f"{done / 1e6:.1f} MB"
        end = "\n" if final else ""
        self.stream.write(f"\r  {self.label}: {size}  {rate:.1f} MB/s   {end}")
        self.stream.flush()


def _open(url: str, offset: int, timeout_s: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout_s)  # noqa: S310 (https/http URLs from the registry)


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def download_url(url: str, dest: Path, label: str = "download", expected_sha256: str = "",
                 progress: Callable[[int, int], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 60.0) -> str:
    """Download `url` to `dest` (atomically) and return the file's sha256.

    Streams into ``dest + '.part'``; a cut connection is resumed with an HTTP Range request (up
    to `retries` more attempts, also across calls: an existing .part is resumed). When the server
    ignores Range (answers 200), the download restarts from zero. The .part is moved onto `dest`
    only when complete and, if `expected_sha256` is given, matching; a mismatch deletes it.
    HTTP 4xx fails at once (the .part is kept for a later resume); 5xx and connection errors are
    retried. progress(done_bytes, total_bytes or 0).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    attempt = 0
    last_error = ""
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            resp = _open(url, offset, timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:   # the .part is already complete (or longer): start over
                part.unlink()
                last_error = "HTTP 416 on resume"
            elif 400 <= exc.code < 500:
                raise DownloadError(f"downloading {label} from {url} failed: HTTP {exc.code} {exc.reason}"
                                    + (" (the file is not there: the registry URL may be outdated)"
                                       if exc.code == 404 else "")) from exc
            else:
                last_error = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"cannot connect: {reason}"
        else:
            with resp:
                status = getattr(resp, "status", 200)
                start = _content_range_start(resp.headers.get("Content-Range")) if status == 206 else None
                if status == 206 and start != offset:
                    raise DownloadError(f"downloading {label}: the server resumed at byte {start}, "
                                        f"not {offset}; delete {part} and try again")
                if status != 206:
                    offset = 0               # a plain 200: the server sends the whole file again
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else 0
                try:
                    with open(part, "ab" if offset else "wb") as f:
                        done = offset
                        while True:
                            if should_cancel is not None and should_cancel():
                                raise DownloadCancelled(f"download of {label} cancelled; {done} bytes kept in "
                                                        f"{part} for a later resume")
                            chunk = resp.read(CHUNK_BYTES)
                            if not chunk:
                                break
                            f.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, total)
                        f.flush()
                        os.fsync(f.fileno())
                    if total and done < total:
                        raise http.client.IncompleteRead(b"", total - done)
                except (OSError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
                    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(
                            exc, (ConnectionError, TimeoutError)):
                        raise DownloadError(f"writing {part} failed: {exc}") from exc
                    last_error = f"connection lost ({type(exc).__name__})"
                else:
                    digest = sha256_file(part)
                    if expected_sha256 and digest != expected_sha256:
                        part.unlink()
                        raise ChecksumMismatchError(
                            f"downloaded {label} has sha256 {digest}, expected {expected_sha256}: the file "
                            f"on the server differs from the one first installed (or it was corrupted in "
                            f"transit); nothing was installed")
                    os.replace(part, dest)
                    return digest
        attempt += 1
        if attempt > retries:
            kept = f"; {part.stat().st_size} bytes kept in {part}, run the same command to resume" \
                if part.exists() and part.stat().st_size else ""
            raise DownloadError(f"downloading {label} from {url} failed after {attempt} attempt(s): "
                                f"{last_error}{kept}")
        time.sleep(backoff_s * attempt)


def download_model(name: str, folder: Path | None = None, url: str | None = None,
                   out: Callable[[str], None] | None = print, progress_stream: Any = sys.stderr,
                   should_cancel: Callable[[], bool] | None = None, retries: int = 3,
                   backoff_s: float = 1.0, timeout_s: float = 60.0) -> Path:
    """Download registry model `name` into the models folder; print its licence first.

    An installed model is not downloaded again (its size is checked). The sha256 is compared with
    the shipped one, else the one recorded by an earlier download of the same name; the first
    download records it. `url` overrides the registry URL (tests, mirrors).
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(f"unknown model '{name}'; downloadable: "
                                + ", ".join(s.name for s in REGISTRY.values() if s.kind == "download"))
    if spec.kind == "embedded":
        if out:
            out(f"{name} is the embedded default model: nothing to download")
        return resolve_model(name, folder=folder)
    if spec.kind == "manual":
        raise UnknownModelError(f"model '{name}' cannot be downloaded by a script: {spec.instructions}")
    folder = models_dir() if folder is None else folder
    dest = folder / spec.filename
    if dest.is_file():
        path = resolve_model(name, folder=folder)
        if out:
            out(f"{name} is already installed: {path}")
        return path
    say = out or (lambda _line: None)
    say(f"model {name}: {spec.source}, {spec.width}x{spec.height} pixels")
    say(f"licence: {spec.licence}")
    if spec.notes:
        say(f"note: {spec.notes}")
    say(f"downloading {spec.url if url is None else url} -> {dest}")
    want = expected_sha256(name, folder)
    line = _ProgressLine(name, progress_stream)
    digest = download_url(spec.url if url is None else url, dest, label=name, expected_sha256=want,
                          progress=line, should_cancel=should_cancel, retries=retries,
                          backoff_s=backoff_s, timeout_s=timeout_s)
    line(dest.stat().st_size, dest.stat().st_size, final=True)
    _record(folder, name, dest.name, digest, dest.stat().st_size, spec.url if url is None else url)
    say(f"installed {name}: {dest} (sha256 {digest}" + (", verified)" if want else ", recorded: trust on first use)"))
    return dest


def add_model_file(source: Path, name: str, folder: Path | None = None,
                   out: Callable[[str], None] | None = print) -> Path:
    """Register a model file the user downloaded: copy it into the models folder (atomically) as
    `name` and record its sha256. A registry name (e.g. human-512) takes its registry file name and
    is checked against a shipped/recorded hash; any other name must be lowercase letters, digits,
    '.', '_' or '-'."""
    source = Path(source).expanduser()
    if not source.is_file():
        raise ModelError(f"{source} is not a file")
    if not _NAME_RE.match(name):
        raise ModelError(f"model name '{name}' is not valid: use lowercase letters, digits, '.', '_' or '-'")
    spec = REGISTRY.get(name)
    if spec is not None and spec.kind == "embedded":
        raise ModelError(f"'{name}' is the embedded default model; choose another name")
    folder = models_dir() if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    filename = spec.filename if spec is not None else f"{name}{source.suffix or '.pkl'}"
    dest = folder / filename
    want = expected_sha256(name, folder)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=PART_SUFFIX, dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f, open(source, "rb") as src:
            shutil.copyfileobj(src, f, CHUNK_BYTES)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        if want and digest != want:
            raise ChecksumMismatchError(f"{source} has sha256 {digest}, expected {want} for '{name}': "
                                        "it is a different file; nothing was registered")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _record(folder, name, filename, digest, dest.stat().st_size, f"file {source}")
    if out:
        if spec is not None:
            out(f"licence: {spec.licence}")
        out(f"registered {name}: {dest} (sha256 {digest})")
    return dest


def remove_model(name: str, folder: Path | None = None) -> str:
    """Delete an installed model's file (and any .part) and forget its recorded hash."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.kind == "embedded":
        raise ModelError(f"'{name}' is the embedded default model; it cannot be removed")
    folder = models_dir() if folder is None else folder
    entries = _read_registry(folder)
    path = _model_path(name, folder, entries)
    if path is None:
        raise UnknownModelError(f"unknown model '{name}'")
    removed = []
    for p in (path, path.with_name(path.name + PART_SUFFIX)):
        if p.is_file():
            p.unlink()
            removed.append(str(p))
    if entries.pop(name, None) is not None:
        _write_registry(folder, entries)
    return f"removed {', '.join(removed)}" if removed else f"{name} was not installed"


# --------------------------------------------------------------------------------------------
# Command line: python -m backend.models ...
# --------------------------------------------------------------------------------------------

def format_table(infos: Iterable[ModelInfo]) -> list[str]:
    """Human-readable lines for `list`: name, size, state, source."""
    lines = [f"{'name':<14} {'size (WxH)':<11} {'state':<14} source"]
    for m in infos:
        size = f"{m.width}x{m.height}" if m.width else "?"
        state = "installed" if m.installed else ("manual" if m.kind == "manual" else "not installed")
        if m.name == DEFAULT_MODEL:
            state += "*"
        lines.append(f"{m.name:<14} {size:<11} {state:<14} {m.source}")
    lines.append(f"* the embedded default. Models folder: {models_dir()}  (${MODELS_DIR_ENV} overrides)")
    return lines


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list known models and whether they are installed")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_dl = sub.add_parser("download", help="download a model from the registry (licence printed first)")
    p_dl.add_argument("name")
    p_add = sub.add_parser("add", help="register a model file you downloaded yourself")
    p_add.add_argument("path", type=Path)
    p_add.add_argument("name")
    p_verify = sub.add_parser("verify", help="check an installed model's sha256")
    p_verify.add_argument("name")
    p_rm = sub.add_parser("remove", help="delete an installed model")
    p_rm.add_argument("name")
    p_path = sub.add_parser("path", help="print the file of an installed model")
    p_path.add_argument("name")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        if args.command == "list":
            infos = available_models()
            if args.json:
                print(json.dumps([{**asdict(m), "path": str(m.path) if m.path else None} for m in infos], indent=1))
            else:
                print("\n".join(format_table(infos)))
        elif args.command == "download":
            download_model(args.name)
        elif args.command == "add":
            add_model_file(args.path, args.name)
        elif args.command == "verify":
            print(verify_model(args.name))
        elif args.command == "remove":
            print(remove_model(args.name))
        elif args.command == "path":
            print(resolve_model(args.name))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; a partial download is kept and resumes next time", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
