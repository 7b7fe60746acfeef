"""benchmarks/refinish.py: a captured drag, finished again with the server's settings, is the server's
result byte for byte; other settings change it; a misspelt setting is refused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def refinish():
    spec = importlib.util.spec_from_file_location("refinish_under_test", REPO / "benchmarks" / "refinish.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["refinish_under_test"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("refinish_under_test", None)


def test_misspelt_setting_is_refused(refinish) -> None:
    with pytest.raises(SystemExit, match="no field 'pin_sigmaa'"):
        refinish.parse_settings(["pin_sigmaa=3"])
    with pytest.raises(SystemExit, match="pin takes true or false, not 'flase'"):
        refinish.parse_settings(["pin=flase"])   # a typo must not quietly turn the pins off
    settings = refinish.parse_settings(["pin=false", "radii=3,2,1", "pin_sigma=6"])
    assert (settings.pin, settings.radii, settings.pin_sigma) == (False, (3, 2, 1), 6.0)


def test_capture_then_finish_reproduces_the_server(refinish, tmp_path: Path) -> None:
    # a smile (two mouth corners) on a 128 px layer: the real server in this process, one real drag
    saved = refinish.capture([4], 128, tmp_path / "captures", tmp_path / "cache")
    assert [p.name for p in saved] == ["s1-004-smile-128.pt"]
    same = refinish.finish(tmp_path / "captures", refinish.parse_settings([]), tmp_path / "pictures")
    assert len(same) == 1 and same[0]["same_as_server"]
    assert (tmp_path / "pictures" / "s1-004-smile-128.png").is_file()
    # without the pins the handles' content is not taken the rest of the way: another picture
    other = refinish.finish(tmp_path / "captures", refinish.parse_settings(["pin=false"]), None)
    assert not other[0]["same_as_server"]


def test_table_names_what_each_run_changed(refinish, tmp_path: Path) -> None:
    import dataclasses
    import json

    def run(name: str, settings, ratios: list[float]) -> Path:
        cases = [dict(case=f"s1-00{i}-x", ratio=r, psnr=30.0 + (r < 1), psnr_no_edit=30.5, kp_per_move=0.2)
                 for i, r in enumerate(ratios)]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dict(settings=dataclasses.asdict(settings), cases=cases)))
        return path

    base = run("base", refinish.parse_settings([]), [0.5, 1.5])
    other = run("other", refinish.parse_settings(["pin_sigma=3", "radii=3,2,1"]), [0.5, 0.9])
    text = refinish.table([base, other])
    assert "| defaults | 1.000 | 1/2 | 1/2 | 0.20 |" in text
    assert "| radii=(3, 2, 1), pin_sigma=3.0 | 0.700 | 2/2 | 2/2 | 0.20 |" in text
    assert "| s1-001-x | 1.50 | 0.90 |" in text


def test_a_brow_gap_moves_the_brows_as_wholes_through_the_real_server(refinish, tmp_path: Path) -> None:
    # four handles on the ends of two brows, all up (tuning case s1-010) on a 512 px layer: the brows
    # are strokes, so the server moves them whole in the layer's pixels; the rest of the face is untouched
    import numpy as np
    import torch

    from backend.sessions import POINT_BOXES_NOTE, STROKES_NOTE
    from training import paired

    refinish.capture([10], 512, tmp_path / "captures", tmp_path / "cache")
    (row,) = refinish.finish(tmp_path / "captures", refinish.parse_settings([]), None)
    assert row["same_as_server"] and STROKES_NOTE in row["note"] and POINT_BOXES_NOTE not in row["note"]
    assert row["landed"] == [True] * 4
    assert all(part.strip() for part in row["note"].split(";"))   # the replaced note leaves no empty part
    assert row["ratio"] < 0.6 and row["psnr"] > row["psnr_no_edit"] + 3   # closer to the exact answer
    state = torch.load(tmp_path / "captures" / "s1-010-brow_gap-512.pt", weights_only=False)
    layer, _ = paired.make_case(1, 10).render(512)
    assert len(state["rgba"]) == 512 * 512 * 4 and tuple(state["offset"]) == (0, 0)
    rgba = np.frombuffer(state["rgba"], np.uint8).reshape(512, 512, 4)
    changed = np.abs(rgba[..., :3].astype(int) - layer).max(2) > 0
    rows, _ = np.nonzero(changed)
    # only around the brows (handles at y 227-242 px, their targets ~10 px above): the eyes, nose and
    # mouth below are the layer's own pixels
    assert rows.max() < 290 and changed[300:].sum() == 0
