"""ST-LPIPS: our network loads every shipped key and behaves like a perceptual distance."""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from inversion_helpers import structured_image

from inversion.lpips import STLPIPS, load_shipped_state_dict

NETS = ["vgg", "alex"]


@pytest.fixture(scope="module", params=NETS)
def metric(request: pytest.FixtureRequest) -> STLPIPS:
    return STLPIPS(net=request.param).eval()


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    xs = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    k = k / k.sum()
    c = img.shape[1]
    img = F.pad(img, (radius,) * 4, mode="reflect")
    img = F.conv2d(img, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(img, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@pytest.mark.parametrize("net", NETS)
def test_every_shipped_key_is_loaded(net: str) -> None:
    shipped = load_shipped_state_dict(net)  # type: ignore[arg-type]
    model = STLPIPS(net=net)  # type: ignore[arg-type]
    assert set(model.shipped_keys) == set(shipped)
    ours = model.state_dict()
    # Strict loading already failed on any missing/unexpected key; also check the tensors
    # themselves arrived (same multiset of values, our heads are flattened).
    assert len(ours) == len(shipped)
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in shipped.values())
    ours_sorted = sorted(float(t.double().sum()) for t in ours.values())
    shipped_sorted = sorted(float(t.double().sum()) for t in shipped.values())
    assert ours_sorted == pytest.approx(shipped_sorted, rel=1e-12, abs=1e-12)
    # The blur kernels are normalised low-pass filters and the heads are non-negative.
    for name, tensor in ours.items():
        if name.endswith(".kernel"):
            assert torch.allclose(tensor.sum(dim=(1, 2, 3)), torch.ones(tensor.shape[0]))
        if name.startswith("head_weights"):
            assert (tensor >= 0).all()


def test_parameters_frozen_and_inputs_differentiable(metric: STLPIPS, image48: torch.Tensor) -> None:
    assert all(not p.requires_grad for p in metric.parameters())
    x = (image48 * 0.8).requires_grad_(True)
    d = metric(x, image48)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())


def test_gradient_finite_on_flat_image(metric: STLPIPS) -> None:
    # A flat black image drives many ReLU maps to all-zero vectors (norm 0).
    x = torch.full((1, 3, 32, 32), -1.0, requires_grad=True)
    metric(x, torch.zeros(1, 3, 32, 32)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_identical_is_zero_and_symmetric(metric: STLPIPS, image48: torch.Tensor) -> None:
    other = structured_image(48, 48, seed=7)
    with torch.no_grad():
        assert metric(image48, image48).item() == pytest.approx(0.0, abs=1e-7)
        ab, ba = metric(image48, other).item(), metric(other, image48).item()
    assert ab > 0.05  # unrelated images are far apart
    assert ab == pytest.approx(ba, rel=1e-5)


def test_batch_shape_and_broadcast(metric: STLPIPS, image48: torch.Tensor) -> None:
    batch = torch.cat([image48, structured_image(48, 48, seed=3), image48 * 0.5])
    with torch.no_grad():
        d = metric(batch, image48)
        one_by_one = torch.stack([metric(b[None], image48)[0] for b in batch])
    assert d.shape == (3,)
    assert torch.allclose(d, one_by_one, atol=1e-6)
    assert d[0].item() == pytest.approx(0.0, abs=1e-7)


def test_grows_with_noise(metric: STLPIPS, image48: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(image48.shape, generator=gen)
    with torch.no_grad():
        d = [metric((image48 + s * noise).clamp(-1, 1), image48).item() for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_grows_with_blur(metric: STLPIPS, image48: torch.Tensor) -> None:
    with torch.no_grad():
        d = [metric(gaussian_blur(image48, s), image48).item() for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_one_pixel_shift_is_cheap_compared_to_blur(metric: STLPIPS, image48: torch.Tensor) -> None:
    # The point of the shift-tolerant variant: a 1-pixel translation is a small change.
    shifted = torch.roll(image48, shifts=1, dims=3)
    with torch.no_grad():
        d_shift = metric(shifted[..., 4:-4, 4:-4], image48[..., 4:-4, 4:-4]).item()
        d_blur = metric(gaussian_blur(image48, 2.0)[..., 4:-4, 4:-4], image48[..., 4:-4, 4:-4]).item()
    assert d_shift < d_blur


def test_features_cache_matches_forward(metric: STLPIPS, image48: torch.Tensor) -> None:
    other = structured_image(48, 48, seed=5)
    with torch.no_grad():
        direct = metric(other, image48)
        cached = metric.distance_to(other, metric.features(image48))
    assert torch.equal(direct, cached)


def test_bad_inputs(metric: STLPIPS) -> None:
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        metric(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least"):
        metric(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="differ in size"):
        metric(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 48, 32))
    with pytest.raises(ValueError, match="batch sizes"):
        metric(torch.zeros(2, 3, 32, 32), torch.zeros(3, 3, 32, 32))
    with pytest.raises(ValueError, match="net must be"):
        STLPIPS(net="squeeze")  # type: ignore[arg-type]


@pytest.mark.parametrize("net", NETS)
def test_matches_the_wheels_own_network(net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare with the stlpips-pytorch implementation itself.

    Its modules import torchvision (and torchsummary) at module level but use them only for the
    non-shift-tolerant variants, and `from IPython import embed` (a debugging leftover, never
    called), so empty stand-in modules are enough to import it here: the check always runs, with
    no test-only dependency on IPython.
    """
    for name in ("torchvision", "torchvision.models", "torchsummary", "IPython"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]  # type: ignore[attr-defined]
    sys.modules["torchsummary"].summary = None  # type: ignore[attr-defined]
    if not hasattr(sys.modules["IPython"], "embed"):
        monkeypatch.setattr(sys.modules["IPython"], "embed", None, raising=False)
    before = set(sys.modules)
    try:
        reference_module = importlib.import_module("stlpips_pytorch.stlpips")
        # Its VGG builds (and initialises) ImageNet classifier layers it never uses: skip the
        # initialisation (seconds of random numbers); the trunk is loaded from the file anyway.
        vgg_module = importlib.import_module("stlpips_pytorch.models_lpf.vgg")
        monkeypatch.setattr(vgg_module.VGG, "_initialize_weights", lambda self: None)
        reference = reference_module.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
    finally:
        # the wheel's modules were imported against the stand-ins: do not leave them behind
        for mod in set(sys.modules) - before:
            del sys.modules[mod]
    ours = STLPIPS(net=net)  # type: ignore[arg-type]
    a = torch.cat([structured_image(48, 40, seed=s) for s in range(3)])
    b = torch.cat([structured_image(48, 40, seed=s + 10) for s in range(3)])
    b[0] = gaussian_blur(a[:1], 1.0)[0]
    with torch.no_grad():
        expected = reference(a, b).flatten()
        got = ours(a, b)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got, expected)
