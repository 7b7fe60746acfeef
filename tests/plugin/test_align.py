"""Face alignment on the plug-in's side, with the fake GIMP and a fake backend that answers as the
server does: for a model whose alignment is "ffhq" and align=auto the plug-in sends the largest native
region around the points (not the model-shaped crop) with region-pixel points, places the RGBA result
exactly at the returned offset, masks only the produced area, keeps the original untouched, and drags
again through the same session; align=off and models without alignment send the model-shaped crop
(at its own resolution too, protocol 4)."""

from __future__ import annotations

import json

import pytest
from draggan_core import edit, errors, geometry, options, parasite, texts

from . import fakegimp
from .conftest import FakeBackend


def _opts(**kw) -> options.Options:
    base = dict(backend_address="tcp://127.0.0.1:5555", max_steps=20, model="face")
    base.update(kw)
    return options.Options(**base)


def _scene(offsets=(6, 4), selection=False):
    """A 70x56 photo layer at `offsets` in a 90x70 image; one drag near the layer's left edge, so
    the fake 'face' (a diamond of radius 30 around the handle) runs over the layer's edge."""
    image, layer = fakegimp.make_photo(70, 56, offsets=offsets, image_size=(90, 70))
    ox, oy = offsets
    fakegimp.add_path(image, [[(ox + 12.5, oy + 28.5), (ox + 16.5, oy + 27.5)]])
    if selection:
        image.select_rectangle("REPLACE", ox + 2, oy + 15, 30, 30)
    fakegimp.log.clear()
    return image, layer


def _alpha(layer) -> list[int]:
    return [layer.pixel(x, y)[3] for y in range(layer.height) for x in range(layer.width)]


def test_aligned_edit_sends_the_native_region_and_places_the_result_exactly() -> None:
    backend = FakeBackend(models=[("face", 16, 16)], aligned=("face",))
    image, layer = _scene()
    before = bytes(layer.data)
    seen: list[str] = []
    progress = edit.Progress()
    progress.text = seen.append  # type: ignore[method-assign]
    out = edit.run_edit(image, [layer], _opts(), progress, backend)

    kind, call = backend.calls[1]
    # the whole layer (it is under 2048 px) at native resolution, points in its pixel-centre coordinates
    assert kind == "edit" and call["align"] == "auto" and call["size"] == (70, 56)
    assert out.region == geometry.Rect(6, 4, 70, 56)
    assert call["rgb"] == bytes(before[i] for i in range(len(before)) if i % 4 != 3)   # native pixels, unscaled
    assert call["handles"] == [(12.0, 28.0)] and call["targets"] == [(16.0, 27.0)]
    assert not any(c[0] == "Image.scale" for c in fakegimp.log)   # nothing was scaled in GIMP
    # the layer is the produced area's box at the backend's offset: the diamond cut at the left edge
    # (x 0..42 of the region: cut at its left edge, y 0..55: cut at its top and bottom)
    assert out.crop == geometry.Rect(6 + 0, 4 + 0, 43, 56) and out.alignment == "ffhq"
    assert out.layer.get_offsets() == (True, out.crop.x, out.crop.y)
    assert (out.layer.width, out.layer.height) == (out.crop.w, out.crop.h)
    produced = [1 if abs(x - 12) + abs(y - 28) <= 30 else 0
                for y in range(out.crop.h) for x in range(out.crop.w)]
    assert [a // 255 for a in _alpha(out.layer)] == produced
    # the layer mask covers only the produced area (the padding beyond the layer's edge never shows)
    mask = out.layer.get_mask()
    assert mask is not None and any(mask.data)
    assert all(m == 0 for m, p in zip(mask.data, produced) if not p)
    # the original is untouched; the progress text said that the face was aligned
    assert layer.writes == 0 and bytes(layer.data) == before and image.layers == [out.layer, layer]
    assert any("face aligned (rotated" in t for t in seen)
    assert any("sending the 70x56 crop at its own resolution; the backend aligns the face in it" in t for t in seen)
    record = parasite.read_record(out.layer)
    assert record is not None and record.native and record.region == out.region and record.crop == out.crop


def test_drag_again_reuses_the_aligned_session_in_the_same_region() -> None:
    backend = FakeBackend(models=[("face", 16, 16)], aligned=("face",))
    image, layer = _scene()
    first = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    again = fakegimp.add_path(image, [[(22.5, 32.5), (24.5, 32.5)]], "again")
    second = edit.run_edit(image, [first.layer], _opts(path=again), edit.Progress(), backend)
    assert backend.kinds() == ["edit", "continue"]
    kind, call = backend.calls[-2]
    assert kind == "continue" and call["size"] == (70, 56) and call["handles"] == [(16.0, 28.0)]
    assert second.continued and second.crop == first.crop and second.region == first.region
    assert [a // 255 for a in _alpha(second.layer)] == [a // 255 for a in _alpha(first.layer)]


def test_no_face_found_is_said_and_the_unaligned_box_is_placed() -> None:
    backend = FakeBackend(models=[("face", 16, 16)], aligned=("face",))
    backend.no_face = True
    image, layer = _scene(selection=True)
    seen: list[str] = []
    progress = edit.Progress()
    progress.text = seen.append  # type: ignore[method-assign]
    out = edit.run_edit(image, [layer], _opts(), progress, backend)
    assert out.alignment == "none" and "no face found" in out.note
    assert any("no face found: editing without alignment" in t for t in seen)
    mask = out.layer.get_mask()
    assert mask is not None and backend.calls[1][1]["mask"] is not None   # the selection went along
    assert all(a == 255 for a in _alpha(out.layer))


@pytest.mark.parametrize("case", ["off", "model without alignment"])
def test_align_off_or_unaligned_model_sends_the_model_shaped_crop(case: str) -> None:
    aligned = ("face",) if case == "off" else ()
    backend = FakeBackend(models=[("face", 16, 16)], aligned=aligned)
    image, layer = _scene()
    out = edit.run_edit(image, [layer], _opts(align="off" if case == "off" else "auto"), edit.Progress(), backend)
    call = backend.calls[1][1]
    crop = out.region
    assert call["align"] == "off" and out.alignment == "" and crop is not None and crop.w == crop.h
    assert call["size"] == (crop.w, crop.h) and crop.w < 56     # the crop around the points, natively
    record = parasite.read_record(out.layer)
    assert record is not None and record.native and not record.aligned


def test_changing_the_align_option_inverts_anew() -> None:
    backend = FakeBackend(models=[("face", 16, 16)], aligned=("face",))
    image, layer = _scene()
    first = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    again = fakegimp.add_path(image, [[(22.5, 32.5), (24.5, 32.5)]], "again")
    second = edit.run_edit(image, [first.layer], _opts(path=again, align="off"), edit.Progress(), backend)
    assert backend.kinds() == ["edit", "edit"] and "face alignment setting changed" in second.reason


def test_native_region_is_capped_and_centred_on_the_points() -> None:
    layer = geometry.Rect(0, 0, 5000, 3000)
    region = geometry.plan_native_region([(2000.0, 100.0), (2100.0, 120.0)], layer)
    assert (region.w, region.h) == (2048, 2048) and layer.contains_rect(region)
    assert region.contains_point((2000.0, 100.0)) and region.contains_point((2100.0, 120.0))
    assert region.y == 0 and abs(region.x + 1024 - 2050) <= 1
    near_edge = geometry.plan_native_region([(4900.0, 2900.0)], layer)   # inside the layer, covering the point
    assert near_edge == geometry.Rect(5000 - 2048, 3000 - 2048, 2048, 2048)
    with pytest.raises(errors.PluginError, match="at most 2048x2048"):
        geometry.plan_native_region([(0.0, 0.0), (4000.0, 10.0)], layer)
    # region pixel-centre coordinates, kept on the region's grid
    assert geometry.to_sent_points([(10.5, 20.5), (0.0, 0.0)], geometry.Rect(10, 20, 5, 5), (5, 5)) == [(0.0, 0.0),
                                                                                                       (0.0, 0.0)]


def test_a_result_that_does_not_fit_the_region_is_refused_before_anything_is_written() -> None:
    backend = FakeBackend(models=[("face", 16, 16)], aligned=("face",))
    backend.face_radius = 500   # the fake would answer a box larger than the region sent
    image, layer = _scene()
    real = backend._crop_result

    def shifted(*args, **kw):
        result = real(*args, **kw)
        result.offset = (60, 50)
        return result

    backend._crop_result = shifted  # type: ignore[method-assign]
    with pytest.raises(errors.PluginError, match="does not fit"):
        edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert image.layers == [layer] and image.undo_groups == 0


def test_progress_shows_the_alignment_notes() -> None:
    from draggan_wire import protocol

    msg = protocol.Progress(phase="inversion", text="face aligned (rotated +12 deg, 1.50 crop px per model px)")
    assert "face aligned (rotated +12 deg" in texts.progress_text(msg, "new edit")
    assert "waiting" not in texts.progress_text(protocol.Progress(phase="drag", text="done: handles reached"), "x")
    assert json.loads(json.dumps(options.ALIGN_CHOICES))[0][0] == "auto"
