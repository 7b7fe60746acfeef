"""Five face landmarks (eye centres, nose tip, mouth corners) with MTCNN, defined in our own code.

MTCNN (Zhang et al., 2016): a cascade of three small networks (P-Net on an image pyramid, R-Net on
24x24 crops, O-Net on 48x48 crops) that returns face boxes and 5 landmarks. The trained weights ship
as plain state dicts inside the PyPI wheel ``facenet-pytorch`` (MIT licence; ``facenet_pytorch/data/
{pnet,rnet,onet}.pt``, ported from the MIT-licensed davidsandberg/facenet, which converted the
authors' released Caffe models). That package pins torch < 2.3 and imports torchvision, so it is
installed with ``pip install --no-deps facenet-pytorch`` (optional: install.py) and never imported:
we locate its data folder with ``importlib.util.find_spec`` (which does not run the package) and load
the three files strictly (``weights_only=True``, every key and shape must match) into the modules
below. ``$DRAGGAN_MTCNN_WEIGHTS`` may name a folder holding the three files instead. Nothing is
downloaded.

:func:`detect_faces` returns :class:`alignment.align.FaceLandmarks` in pixel-centre coordinates,
best first. Measured error on scikit-image's astronaut against hand annotations:
tests/alignment/data/astronaut-landmarks.json and docs/alignment.md.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignment.align import FaceLandmarks

__all__ = ["LandmarksUnavailable", "MTCNN", "detect_faces", "weights_dir", "load_mtcnn", "refine_landmarks",
           "procedural_face_predictor", "procedural_face_predictor_at", "FramePredictor", "LandmarkRefiner",
           "procedural_corner_refiner"]

WEIGHTS_ENV = "DRAGGAN_MTCNN_WEIGHTS"
_FILES = ("pnet.pt", "rnet.pt", "onet.pt")


class LandmarksUnavailable(RuntimeError):
    """The MTCNN weights are not installed (the message says how to install them)."""


def weights_dir() -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt; raises :class:`LandmarksUnavailable`."""
    env = os.environ.get(WEIGHTS_ENV)
    candidates = [Path(env)] if env else []
    spec = importlib.util.find_spec("facenet_pytorch")   # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" for p in spec.submodule_search_locations]
    for folder in candidates:
        if all((folder / f).is_file() for f in _FILES):
            return folder
    raise LandmarksUnavailable(
        "face landmarks need the MTCNN weights from facenet-pytorch: run "
        "`pip install --no-deps facenet-pytorch` in the backend's environment (or set "
        f"${WEIGHTS_ENV} to a folder with {', '.join(_FILES)})")


class _PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)   # box regression, face probability


class _RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))   # Caffe's (w, h) order
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class _ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


class MTCNN(nn.Module):
    """The three networks; :meth:`detect` runs the cascade on one RGB uint8 image."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = _PNet(), _RNet(), _ONet()

    def load_shipped(self, folder: Path) -> MTCNN:
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        return self.eval()

    @torch.no_grad()
    def detect(self, image: np.ndarray, min_size: int = 20, factor: float = 0.709,
               thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)) -> list[FaceLandmarks]:
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
            raise ValueError("image must be uint8 [H, W, 3]")
        img = torch.from_numpy(np.array(a[..., :3])).permute(2, 0, 1)[None].float()
        H, W = a.shape[:2]
        m = 12.0 / min_size
        min_side = min(H, W) * m
        scales = []
        s = m
        while min_side >= 12:
            scales.append(s)
            s *= factor
            min_side *= factor
        # stage 1: P-Net on the pyramid
        found = []
        for scale in scales:
            data = _norm(F.interpolate(img, size=(int(H * scale + 1), int(W * scale + 1)), mode="area"))
            reg, prob = self.pnet(data)
            boxes = _pnet_boxes(reg[0], prob[0, 1], scale, thresholds[0])
            if len(boxes):
                found.append(boxes[_nms(boxes, 0.5)])
        if not found:
            return []
        boxes = torch.cat(found)
        boxes = boxes[_nms(boxes, 0.7)]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                             boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh, boxes[:, 4]], 1)
        boxes = _square(boxes)
        # stage 2: R-Net on 24x24 crops
        reg, prob = self.rnet(_crops(img, boxes, 24))
        keep = prob[:, 1] > thresholds[1]
        boxes = torch.cat([boxes[keep, :4], prob[keep, 1:2]], 1)
        reg = reg[keep]
        if not len(boxes):
            return []
        k = _nms(boxes, 0.7)
        boxes = _square(_regress(boxes[k], reg[k]))
        # stage 3: O-Net on 48x48 crops: boxes and landmarks
        reg, pts, prob = self.onet(_crops(img, boxes, 48))
        keep = prob[:, 1] > thresholds[2]
        boxes, reg, pts = torch.cat([boxes[keep, :4], prob[keep, 1:2]], 1), reg[keep], pts[keep]
        if not len(boxes):
            return []
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        px = bw * pts[:, :5] + boxes[:, 0:1] - 1
        py = bh * pts[:, 5:10] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, reg)
        k = _nms(boxes, 0.7, by_min=True)
        out = []
        for i in k.tolist():
            lm = np.stack([px[i].numpy(), py[i].numpy()], 1).astype(np.float64)
            out.append(FaceLandmarks.from_array(lm, box=boxes[i, :4].tolist(), score=float(boxes[i, 4])))
        return sorted(out, key=lambda f: -f.score)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _pnet_boxes(reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
    """[N, 9] boxes (x1, y1, x2, y2, score, 4 regressions) from P-Net's maps (stride 2, 12 px cells)."""
    ys, xs = torch.nonzero(prob >= threshold, as_tuple=True)
    if not len(ys):
        return torch.zeros((0, 9))
    cell = torch.stack([xs, ys], 1).float()
    q1 = torch.floor((2 * cell + 1) / scale)
    q2 = torch.floor((2 * cell + 12) / scale)
    return torch.cat([q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], 1)


def _nms(boxes: torch.Tensor, threshold: float, by_min: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression by score; overlap = intersection / union (or / smaller area)."""
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = torch.argsort(s, descending=True)
    keep = []
    while len(order):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        inter = w * h
        den = torch.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / den <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.clone()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _square(boxes: torch.Tensor) -> torch.Tensor:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _crops(img: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each box's pixels (clipped to the image, 1-based inclusive as in MTCNN) resized to size x size."""
    H, W = img.shape[-2:]
    out = []
    for b in boxes[:, :4].trunc().int().tolist():
        x, y = max(b[0], 1), max(b[1], 1)
        ex, ey = min(b[2], W), min(b[3], H)
        if ex - x + 1 <= 0 or ey - y + 1 <= 0:
            patch = torch.zeros((1, 3, size, size))
        else:
            patch = F.interpolate(img[:, :, y - 1:ey, x - 1:ex], size=(size, size), mode="area")
        out.append(patch)
    if not out:
        return torch.zeros((0, 3, size, size))
    return _norm(torch.cat(out))


_CACHE: dict[str, MTCNN] = {}


def load_mtcnn() -> MTCNN:
    """The MTCNN with the shipped weights (loaded once per process)."""
    folder = weights_dir()
    key = str(folder)
    if key not in _CACHE:
        _CACHE[key] = MTCNN().load_shipped(folder)
    return _CACHE[key]


def detect_faces(image: np.ndarray, min_size: int = 20) -> list[FaceLandmarks]:
    """Faces in ``image`` (uint8 [H, W, 3] RGB), best first; [] when none. Raises
    :class:`LandmarksUnavailable` when the weights are not installed."""
    return load_mtcnn().detect(image, min_size=min_size)


# ---------------------------------------------------------------------- refinement in the model frame
#: A keypoint predictor for refinement: model-frame images uint8 [N, size, size, 3] -> 5 landmarks
#: each, float [N, 5, 2] model pixels (eye centres, nose tip, mouth corners; x then y).
FramePredictor = Callable[[np.ndarray], np.ndarray]


def refine_landmarks(image: np.ndarray, face: FaceLandmarks, predict: FramePredictor, template: np.ndarray,
                     size: int, iterations: int = 1) -> FaceLandmarks:
    """Refine coarse landmarks (e.g. MTCNN's) with a finer predictor that works in a model's frame.

    Each iteration warps ``image`` (uint8 [H, W, 3]) so that the current landmarks' FFHQ quad lands on
    ``template`` (a quad in the ``size`` x ``size`` frame, :func:`alignment.align.faces_template_quad`
    for the procedural faces), asks ``predict`` for the 5 landmarks there, and maps them back to the
    image. A predictor trained on that frame sees the face as it was trained (upright, centred, at
    its size) whatever the face's roll and scale in the photo, so its error, not the coarse
    detector's, bounds the result. Returns landmarks in ``image`` pixel-centre coordinates (the
    coarse face's box and score kept)."""
    from alignment.align import ffhq_quad, quad_transform

    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    current = face
    for _ in range(iterations):
        al = quad_transform(ffhq_quad(current), size, size, template)
        frame, _valid = al.warp_image(np.asarray(image)[..., :3])
        pts = np.asarray(predict(frame[None]), np.float64).reshape(-1, 5, 2)[0]
        if not np.isfinite(pts).all():
            raise ValueError("the landmark predictor returned non-finite points")
        current = FaceLandmarks.from_array(al.to_crop(pts), face.box, face.score)
    return current


#: Pixel shifts (x, y) whose predictions :func:`procedural_face_predictor` averages.
REFINE_SHIFTS: tuple[tuple[int, int], ...] = tuple((dx, dy) for dx in (-2, 0, 2) for dy in (-2, 0, 2))


def shift_averaged(predict_keypoints: Callable[[np.ndarray], np.ndarray], frames: np.ndarray,
                   shifts: Sequence[tuple[int, int]] = REFINE_SHIFTS) -> np.ndarray:
    """Keypoints of ``frames`` (uint8 [N, H, W, 3]) averaged over copies shifted by ``shifts``
    (whole pixels, x then y; the edge pixels repeat into the gap), each prediction shifted back.

    A stride-4 heatmap detector's error depends on where a feature falls in its cells; averaging
    over shifts cancels part of it (docs/alignment.md: the quad's floor 1.74 -> 1.30 px mean on 48
    faces). ``predict_keypoints`` maps uint8 frames to float [N, K, 2] pixels (x, y)."""
    frames = np.asarray(frames)
    if not shifts:
        raise ValueError("shifts must not be empty")
    pad = max(max(abs(dx), abs(dy)) for dx, dy in shifts)
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    total = None
    for dx, dy in shifts:
        moved = np.ascontiguousarray(padded[:, pad - dy: pad - dy + h, pad - dx: pad - dx + w])
        kps = np.asarray(predict_keypoints(moved), np.float64) - np.array([dx, dy], np.float64)
        total = kps if total is None else total + kps
    assert total is not None
    return total / len(shifts)


def procedural_face_predictor(path: str | os.PathLike[str] | None = None,
                              regression: str | os.PathLike[str] | None = "default") -> FramePredictor:
    """The 5-landmark predictor for training/faces.py renders: training/detector.py's keypoint
    detector (16 keypoints at 128 px, held-out error 0.69 px), averaged over the 9 shifts of
    :data:`REFINE_SHIFTS`, then reduced to eye centres, nose tip and mouth corners by the linear map
    of all 16 keypoints that training/fit_landmarks.py fitted (``regression``: its file, "default"
    for the committed one, None for the direct read-out that :func:`alignment.align.keypoints_to_landmarks`
    applies to exact keypoints). The map uses what neighbouring keypoints know about each landmark:
    on held-out renders it takes the quad's largest corner error from 1.09 to 0.94 px mean, mostly
    through the mouth corners (docs/alignment.md)."""
    from alignment import landmark_map
    from alignment.align import keypoints_to_landmarks
    from alignment.detector import load_detector

    det = load_detector(path)
    weights = None
    if regression is not None:
        weights = landmark_map.load(None if regression == "default" else regression)

    def predict(frames: np.ndarray) -> np.ndarray:
        kps = shift_averaged(det.predict, frames)
        if weights is not None:
            return landmark_map.apply_linear_map(weights, kps)
        return np.stack([keypoints_to_landmarks(k).array() for k in kps])

    return predict


_SIZED_PREDICTORS: dict[int, FramePredictor] = {}


def procedural_face_predictor_at(size: int) -> FramePredictor:
    """:func:`procedural_face_predictor` for frames of ``size`` x ``size`` pixels, loaded once per size.

    The detector works at 128 px: other frames are box-resized to 128 and its points scaled back
    (pixel-centre coordinates, so the half-pixel offsets go with the scale)."""
    if size < 1:
        raise ValueError("size must be positive")
    if size not in _SIZED_PREDICTORS:
        base = procedural_face_predictor()
        if size == 128:
            _SIZED_PREDICTORS[size] = base
        else:
            from PIL import Image

            scale = size / 128.0

            def scaled(frames: np.ndarray) -> np.ndarray:
                small = np.stack([np.asarray(Image.fromarray(f).resize((128, 128), Image.Resampling.BOX))
                                  for f in frames])
                return (base(small) + 0.5) * scale - 0.5

            _SIZED_PREDICTORS[size] = scaled
    return _SIZED_PREDICTORS[size]


# ---------------------------------------------------------------------- second stage: patches in a finer frame
#: A second-stage refiner: (image uint8 [H, W, 3], landmarks in its pixels) -> refined landmarks.
LandmarkRefiner = Callable[[np.ndarray, FaceLandmarks], FaceLandmarks]

_CORNER_REFINERS: dict[str, LandmarkRefiner] = {}


def procedural_corner_refiner(path: str | os.PathLike[str] | None = None, iterations: int = 2) -> LandmarkRefiner:
    """The second stage for training/faces.py renders (training/corner_refiner.py, loaded once per file):
    the face is warped so that its landmarks' FFHQ quad lands on faces-128's template in a 256 px frame,
    and a patch network moves each eye centre and mouth corner onto the feature it sees (``iterations``
    passes, each averaged over 9 patch shifts). The nose is kept. Run it after
    :func:`refine_landmarks`: it expects landmarks within about 2 px (at 128 px) of the truth.

    Why a second stage: the FFHQ quad magnifies eye-centre errors about 3x (0.2 px put its worst
    corner 0.66 px off on average, docs/alignment.md), and the whole-face detector's stride-4 heatmaps
    leave the mouth corners 0.9 px off (0.74 px at the quad on their own)."""
    from alignment import corner_refiner as module
    from alignment.align import ffhq_quad, quad_transform

    key = str(path) + f"@{iterations}"
    if key in _CORNER_REFINERS:
        return _CORNER_REFINERS[key]
    net = module.load_refiner(path)
    template = module.frame_template()
    size = module.FRAME

    def refine(image: np.ndarray, face: FaceLandmarks) -> FaceLandmarks:
        al = quad_transform(ffhq_quad(face), size, size, template)
        frame, _valid = al.warp_image(np.asarray(image)[..., :3])
        pts = module.refine_in_frame(net, frame, al.to_model(face.array()), iterations)
        if not np.isfinite(pts).all():
            raise ValueError("the corner refiner returned non-finite points")
        return FaceLandmarks.from_array(al.to_crop(pts), face.box, face.score)

    _CORNER_REFINERS[key] = refine
    return refine
