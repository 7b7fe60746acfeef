"""The poor-inversion warning fires on an out-of-domain photo with the default model faces-128.

The thresholds live in the model's metadata (backend/models.py, from the committed calibration
backend/data/faces-128.calibration.json made by benchmarks/calibrate_poor_inversion.py). Here the
plug-in's verdict (draggan_core.texts, the rule that names the result layer) is applied to a real
projection, made as the backend makes it for the plug-in's defaults (preset "fast", no PTI), of
scikit-image's public-domain astronaut photo (a 128x128 centre crop, committed in data/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gimp_plugin" / "draggan"))
from draggan_core import texts  # noqa: E402

from backend import models  # noqa: E402
from draggan_util.hashing import sha256_file  # noqa: E402

PHOTO = Path(__file__).resolve().parent / "data" / "astronaut-full-128.png"


def test_the_calibration_describes_the_shipped_default_model() -> None:
    data = json.loads(models.calibration_file(models.DEFAULT_MODEL).read_text())
    shipped = sha256_file(models.EMBEDDED_MODEL_FILE)
    assert data["model_sha256"] == shipped, (
        "backend/data/faces-128.pt was re-exported after its poor-inversion calibration: rerun "
        "`python benchmarks/calibrate_poor_inversion.py` (about 20 CPU-minutes) and commit the new "
        "backend/data/faces-128.calibration.json and docs/poor-inversion-faces-128.md")
    limits = models.poor_inversion(models.DEFAULT_MODEL)
    assert (limits.stlpips, limits.psnr_db) == (data["poor_stlpips"], data["poor_psnr_db"])
    assert limits.source.startswith("calibrated")
    # every out-of-domain photo of the calibration is flagged with these limits
    for s in data["samples"]:
        if s["group"] == "out-of-domain":
            assert texts.is_poor(s["psnr"], s["stlpips"], (limits.stlpips, limits.psnr_db)), s
    assert models.poor_inversion("ffhq-512") == models.DEFAULT_POOR_INVERSION      # official: the default


@pytest.mark.slow
def test_warning_fires_on_an_out_of_domain_photo() -> None:
    import stylegan2
    from inversion import project

    torch.manual_seed(0)
    G = stylegan2.load_generator(models.EMBEDDED_MODEL_FILE, device="cpu")
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert pixels.shape == (G.img_height, G.img_width, 3)
    res = project(G, pixels, preset="fast", pti=False)
    limits = models.poor_inversion(models.DEFAULT_MODEL)
    model_meta = type("ModelChoice", (), {"poor_stlpips": limits.stlpips, "poor_psnr_db": limits.psnr_db})()
    print(f"astronaut on faces-128: ST-LPIPS {res.stlpips:.3f}, PSNR {res.psnr:.1f} dB; "
          f"poor when > {limits.stlpips} or < {limits.psnr_db} dB")
    assert texts.is_poor(res.psnr, res.stlpips, texts.model_limits(model_meta))
    assert "poor inversion" in texts.result_layer_name("Photo", False, True)
