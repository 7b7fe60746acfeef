"""One edit end to end on the fake GIMP: new layer, mask, undo group, errors, drag again, progress."""

from __future__ import annotations

import json

import pytest
from draggan_core import edit, errors, geometry, options, parasite, texts

from . import fakegimp
from .conftest import FakeBackend


def _opts(**kw) -> options.Options:
    base = dict(backend_address="tcp://127.0.0.1:5555", max_steps=20)
    base.update(kw)
    return options.Options(**base)


def _rgb(drawable, x0: int, y0: int, w: int, h: int) -> bytes:
    """RGB bytes of a rectangle of a fake drawable (its own pixels, alpha dropped)."""
    return b"".join(drawable.pixel(x, y)[:3] for y in range(y0, y0 + h) for x in range(x0, x0 + w))


def _scene(offsets=(0, 0)):
    """A 60x50 photo layer at `offsets` in a bigger image, a two-stroke path and a selection."""
    image, layer = fakegimp.make_photo(60, 50, offsets=offsets, image_size=(100, 80))
    ox, oy = offsets
    fakegimp.add_path(image, [[(ox + 20.0, oy + 20.0), (ox + 26.5, oy + 22.0)],
                              [(ox + 30.0, oy + 25.0), (ox + 33.0, oy + 30.0)]])
    image.select_rectangle("REPLACE", ox + 18, oy + 18, 20, 15)
    fakegimp.log.clear()
    return image, layer


def test_edit_makes_one_masked_layer_at_the_crop_in_one_undo_group(backend: FakeBackend) -> None:
    image, layer = _scene(offsets=(7, 5))
    before = bytes(layer.data)
    selection_before = bytes(image.selection.data)
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)

    # exactly one new layer, directly above the source, crop-sized at the crop offsets
    assert image.layers == [out.layer, layer]
    crop = out.crop
    assert out.layer.get_offsets() == (True, crop.x, crop.y)
    assert (out.layer.get_width(), out.layer.get_height()) == (crop.w, crop.h)
    assert crop.w == crop.h and geometry.Rect(7, 5, 60, 50).contains_rect(crop)
    assert out.layer.get_mask() is not None
    assert out.layer.name == "Photo (DragGAN)" and not out.continued and not out.poor_inversion

    # the source layer was only read; the user's selection is back as it was
    assert layer.writes == 0 and bytes(layer.data) == before
    assert bytes(image.selection.data) == selection_before
    assert image.channels == []                      # the saved selection channel was removed

    # one undo group, opened after the backend answered, holding the layer, the mask and the record
    assert image.undo_groups == 1 and image.undo_depth == 0
    assert backend.undo_depth_seen and set(backend.undo_depth_seen) == {0}
    names = [c[0] for c in fakegimp.log]
    start, end = names.index("undo_group_start"), names.index("undo_group_end")
    inserted = [i for i, c in enumerate(fakegimp.log) if c[:2] == ("insert_layer", out.layer.name)]
    assert len(inserted) == 1 and start < inserted[0] < end
    for inside in ("add_mask", "attach_parasite"):
        assert start < names.index(inside) < end, inside

    # protocol 4: the crop goes at its own resolution, nothing is scaled, no temporary image
    assert not any(c[0] == "Image.scale" for c in fakegimp.log)
    assert all(img is image for img in fakegimp.all_images)

    # what the backend got: the crop's own RGB, the selection as a mask, points in crop pixels
    kind, req = backend.calls[1]
    assert kind == "edit" and req["size"] == (crop.w, crop.h) and len(req["rgb"]) == crop.w * crop.h * 3
    assert req["rgb"] == _rgb(layer, crop.x - 7, crop.y - 5, crop.w, crop.h)
    assert req["mask"] is not None and 0 < sum(1 for b in req["mask"] if b) < crop.w * crop.h
    expect = geometry.to_sent_points([(27.0, 25.0), (37.0, 30.0)], crop, (crop.w, crop.h))
    assert req["handles"] == expect and expect[0] == (27.0 - crop.x - 0.5, 25.0 - crop.y - 0.5)
    assert req["params"]["max_steps"] == 20 and req["result"] == "detail" and "pti" not in req["params"]

    # the layer holds what came back, pixel for pixel (the fake inverts the crop it was sent)
    assert _rgb(out.layer, 0, 0, crop.w, crop.h) == bytes(255 - b for b in req["rgb"])

    # the session record: crop, model, address
    rec = parasite.read_record(out.layer)
    assert rec is not None and rec.crop == crop and rec.region == crop and rec.session_id == "s1"
    assert rec.model == "tiny" and rec.pti == "auto" and not rec.aligned


def test_with_the_picture_s_detail_the_mask_is_the_whole_result(backend: FakeBackend) -> None:
    """The backend keeps every pixel the drag did not move: nothing to hide, nothing feathered."""
    image, layer = _scene()
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    crop, mask = out.crop, out.layer.get_mask()
    assert all(mask.pixel(x, y)[0] == 255 for y in range(crop.h) for x in range(crop.w))
    assert not any(c[0] in ("Selection.grow", "Selection.feather", "Selection.shrink") for c in fakegimp.log)


def test_with_the_model_s_pixels_the_mask_is_the_grown_selection_inside_the_inset_crop(backend: FakeBackend) -> None:
    image, layer = _scene()
    out = edit.run_edit(image, [layer], _opts(result="model"), edit.Progress(), backend)
    assert backend.calls[1][1]["result"] == "model"
    crop, mask = out.crop, out.layer.get_mask()
    plan = geometry.plan_mask(crop, True)
    inner = crop.inset(plan.inset)
    sel = geometry.Rect(18 - plan.grow, 18 - plan.grow, 20 + 2 * plan.grow, 15 + 2 * plan.grow)
    keep = sel.intersect(inner)
    for y in range(crop.h):
        for x in range(crop.w):
            ix, iy = x + crop.x, y + crop.y
            want = 255 if keep.x <= ix < keep.x2 and keep.y <= iy < keep.y2 else 0
            assert mask.pixel(x, y)[0] == want, (ix, iy)
    assert ("Selection.feather", float(plan.feather)) in fakegimp.log


def test_with_the_model_s_pixels_and_no_selection_the_whole_crop_with_a_soft_border(backend: FakeBackend) -> None:
    image, layer = _scene()
    fakegimp.Selection.none(image)
    out = edit.run_edit(image, [layer], _opts(result="model"), edit.Progress(), backend)
    assert backend.calls[1][1]["mask"] is None                   # everything may move
    plan = geometry.plan_mask(out.crop, False)
    assert ("Selection.shrink", plan.inset) in fakegimp.log and plan.inset > 0
    assert ("Selection.feather", float(plan.feather)) in fakegimp.log
    assert not any(c[0] == "Selection.grow" for c in fakegimp.log)
    assert fakegimp.Selection.bounds(image)[1] is False          # still nothing selected


@pytest.mark.parametrize("case", ["odd", "no path", "no strokes", "outside", "two layers", "model",
                                  "backend down", "backend error", "selection elsewhere", "floating"])
def test_failures_write_nothing_and_open_no_undo_group(backend: FakeBackend, case: str) -> None:
    image, layer = _scene()
    drawables = [layer]
    opts = _opts()
    if case == "odd":
        image.paths[0].strokes[2].append((40.0, 40.0))
    elif case == "no path":
        image.paths.clear()
        image.selected_paths.clear()
    elif case == "no strokes":
        image.paths[0].strokes.clear()
    elif case == "outside":
        image.paths[0].strokes[1][1] = (70.0, 20.0)
    elif case == "two layers":
        drawables = [layer, layer]
    elif case == "model":
        opts = _opts(model="ffhq-512")
    elif case == "backend down":
        backend.fail_with = errors.backend_unreachable("tcp://127.0.0.1:5555", 4)
    elif case == "floating":
        image.floating = fakegimp.Layer(image, "Pasted Layer", 5, 5)
    elif case == "selection elsewhere":
        opts = _opts(crop_mode="layer")
        image.select_rectangle("REPLACE", 0, 0, 3, 3)     # on the layer, outside the 50x50 crop
        image.paths[0].strokes[1] = [(55.0, 40.0), (57.0, 42.0)]
    elif case == "backend error":
        def broken(*a, **k):
            raise errors.backend_failed("tcp://127.0.0.1:5555", "[internal] boom")
        backend.edit = broken
    before = bytes(layer.data)
    with pytest.raises(errors.PluginError) as info:
        edit.run_edit(image, drawables, opts, edit.Progress(), backend)
    assert info.value.message.startswith("DragGAN")
    expected = {"odd": "odd number", "no path": "has no path", "no strokes": "has no strokes",
                "outside": "target 1 at (70.0, 20.0) lies outside", "two layers": "exactly one selected layer",
                "model": "no model 'ffhq-512'", "backend down": "no answer from the backend",
                "backend error": "[internal] boom", "selection elsewhere": "selection lies outside",
                "floating": "floating selection"}
    assert expected[case] in info.value.message
    assert image.layers == [layer] and bytes(layer.data) == before and layer.writes == 0
    assert image.undo_groups == 0
    assert all(img.deleted for img in fakegimp.all_images if img is not image)


def test_drag_again_continues_the_session_without_inverting(backend: FakeBackend) -> None:
    image, layer = _scene()
    first = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    fakegimp.log.clear()
    fakegimp.add_path(image, [[(25.0, 25.0), (28.0, 26.0)]], "again")
    second = edit.run_edit(image, [first.layer], _opts(), edit.Progress(), backend)
    assert backend.kinds() == ["edit", "continue"]
    assert second.continued and second.crop == first.crop
    # the record holds no secret and no routing id: the identity token (GIMP's folder) owns the session
    raw = json.loads(bytes(first.layer.get_parasite(parasite.PARASITE_NAME).get_data()))
    assert raw["v"] == 4 and "routing_id" not in raw and "token" not in raw and raw["frame"] == "crop"
    kind, req = backend.calls[-2]
    assert kind == "continue" and req["session_id"] == "s1"
    assert image.layers == [second.layer, first.layer, layer]
    assert second.layer.name == "Photo (DragGAN, continued)"
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("continuing the previous drag (no re-inversion)" in t for t in texts_seen)
    assert first.layer.writes == 1          # only its own creation; drag again never writes it


def test_drag_again_outside_the_crop_inverts_anew_and_says_why(backend: FakeBackend) -> None:
    image, layer = fakegimp.make_photo(200, 100)
    fakegimp.add_path(image, [[(20.0, 20.0), (25.0, 22.0)]])
    first = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert first.crop.x2 < 150
    # a new layer that is the whole picture carries the session, then points far outside its crop
    fakegimp.add_path(image, [[(150.0, 50.0), (160.0, 55.0)]], "far")
    whole = fakegimp.Layer(image, "copy", 200, 100)
    image.layers.insert(0, whole)
    parasite.attach_record(whole, parasite.read_record(first.layer), fakegimp.Gimp)
    fakegimp.log.clear()
    edit.run_edit(image, [whole], _opts(), edit.Progress(), backend)
    assert backend.kinds() == ["edit", "edit"]
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("inverting anew: the layer was moved or resized" in t for t in texts_seen)


def test_lost_session_falls_back_to_a_new_inversion(backend: FakeBackend) -> None:
    image, layer = _scene()
    first = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    backend.session_gone = True
    fakegimp.log.clear()
    second = edit.run_edit(image, [first.layer], _opts(), edit.Progress(), backend)
    assert backend.kinds() == ["edit", "continue", "edit"]
    assert not second.continued and second.layer.name == "Photo (DragGAN)"
    assert parasite.read_record(second.layer).session_id == "s2"
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("no longer holds the previous session" in t for t in texts_seen)


def test_poor_inversion_is_named_in_progress_and_layer() -> None:
    backend = FakeBackend(psnr=11.0, stlpips=0.6)
    image, layer = _scene()
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert out.poor_inversion
    assert out.layer.name == "Photo (DragGAN — poor inversion: try PTI or another model)"
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("reconstruction poor" in t and "try PTI or another model" in t for t in texts_seen)


@pytest.mark.parametrize("selected", [True, False])
def test_a_drag_that_stopped_short_is_named_with_advice(backend: FakeBackend, selected: bool) -> None:
    """The backend says the handles did not land (its dense-motion check): the layer says so and the
    status line says which and what may free it (the selection when there was one)."""
    backend.stall = True
    image, layer = _scene()
    if not selected:
        fakegimp.Selection.none(image)
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert out.stopped_short and not out.poor_inversion
    assert out.layer.name == "Photo (DragGAN — stopped short)"
    done = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"][-1]
    assert "stopped short (every handle did not reach its target)" in done
    assert ("Mask strength" in done) == selected and ("more steps" in done) == (not selected)
    # a drag that got there is not flagged; a poor inversion and a short drag are both named
    backend.stall = False
    assert not edit.run_edit(image, [layer], _opts(), edit.Progress(), backend).stopped_short
    backend.stall, backend.psnr, backend.stlpips = True, 11.0, 0.6
    both = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert both.layer.name == "Photo (DragGAN — poor inversion: try PTI or another model; stopped short)"


@pytest.mark.parametrize("crop_mode", ["auto", "selection"])
def test_a_model_of_whole_pictures_gets_the_whole_layer_in_auto_mode(crop_mode: str) -> None:
    """faces-128 draws whole faces: Auto sends the largest model-shaped crop of the layer (as *Whole
    layer*) and says so; a crop mode the user chose is kept."""
    backend = FakeBackend(whole=("tiny",))
    image, layer = _scene()
    out = edit.run_edit(image, [layer], _opts(crop_mode=crop_mode), edit.Progress(), backend)
    points = [(20.0, 20.0), (26.5, 22.0), (30.0, 25.0), (33.0, 30.0)]
    rect, selection = geometry.Rect(0, 0, 60, 50), geometry.Rect(18, 18, 20, 15)
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    if crop_mode == "auto":
        assert out.crop == geometry.plan_crop(points, rect, (16, 16), geometry.CROP_LAYER, selection)
        assert (out.crop.w, out.crop.h) == (50, 50)                      # the layer's height: all of it
        assert any("draws whole pictures: sending the whole layer" in t for t in texts_seen)
    else:
        assert out.crop == geometry.plan_crop(points, rect, (16, 16), geometry.CROP_SELECTION, selection)
        assert not any("whole layer" in t for t in texts_seen)
    # a model of any scene keeps the crop around the points
    other = edit.run_edit(image, [layer], _opts(), edit.Progress(), FakeBackend())
    assert other.crop == geometry.plan_crop(points, rect, (16, 16), geometry.CROP_AUTO, selection)


def test_share_of_the_way() -> None:
    handles, targets = [(0.0, 0.0), (10.0, 0.0)], [(10.0, 0.0), (10.0, 10.0)]
    assert texts.share_of_the_way(handles, targets, targets) == 1.0
    assert texts.share_of_the_way(handles, targets, handles) == 0.0
    assert texts.share_of_the_way(handles, targets, [(5.0, 0.0), (10.0, 5.0)]) == pytest.approx(0.5)
    assert texts.share_of_the_way(handles, targets, [(-5.0, 0.0), (10.0, 0.0)]) == pytest.approx(-0.25)
    assert texts.share_of_the_way([(1.0, 1.0)], [(1.5, 1.0)], [(1.0, 1.0)]) is None   # nothing to do
    assert texts.share_of_the_way(handles, targets, [(1.0, 1.0)]) is None             # a count mismatch


def test_progress_shows_phase_and_step_and_ends_at_one(backend: FakeBackend) -> None:
    image, layer = _scene()
    edit.run_edit(image, [layer], _opts(max_steps=40), edit.Progress(), backend)
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("inversion" in t and "step 5/10" in t for t in texts_seen)
    assert any("dragging" in t and "step 3/40" in t for t in texts_seen)
    fractions = [c[1] for c in fakegimp.log if c[0] == "progress_update"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert fakegimp.log[0][0] == "progress_init"


def test_gimp_refusing_progress_cancels_politely(backend: FakeBackend) -> None:
    image, layer = _scene()
    fakegimp.progress_result["value"] = False        # GIMP stopped answering progress calls
    with pytest.raises(errors.PluginError, match="cancelled; the image was not changed"):
        edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert image.layers == [layer] and image.undo_groups == 0


def test_grayscale_image_gets_a_gray_alpha_layer(backend: FakeBackend) -> None:
    image, layer = _scene()
    image.base_type = "GRAY"
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert out.layer.image_type == "GRAYA_IMAGE"


def test_layer_names_keep_one_tag() -> None:
    assert texts.result_layer_name("Photo (DragGAN)", True, False) == "Photo (DragGAN, continued)"
    assert texts.result_layer_name("A (b)", False, False) == "A (b) (DragGAN)"
    assert texts.is_poor(30.0, 0.5) and texts.is_poor(10.0, 0.1) and not texts.is_poor(25.0, 0.2)
    assert not texts.is_poor(None, None)


def test_a_backend_without_sessions_leaves_no_record(backend: FakeBackend) -> None:
    backend.session_prefix = "none"           # what `draggan-backend serve --no-cache` answers
    image, layer = _scene()
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    assert parasite.read_record(out.layer) is None and out.layer.get_mask() is not None


def test_a_layer_from_an_older_plug_in_inverts_anew_and_says_why(backend: FakeBackend) -> None:
    """Protocol 1 records held the routing id that owned the session: never continued now."""
    image, layer = _scene()
    first = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    raw = json.loads(bytes(first.layer.get_parasite(parasite.PARASITE_NAME).get_data()))
    raw.update(v=1, routing_id="gimp-draggan-0123456789abcdef")
    first.layer.attach_parasite(fakegimp.Gimp.Parasite.new(parasite.PARASITE_NAME, 3, json.dumps(raw).encode()))
    assert parasite.read_record(first.layer) is None and parasite.read_outdated(first.layer)
    fakegimp.log.clear()
    fakegimp.add_path(image, [[(25.0, 25.0), (28.0, 26.0)]], "again")
    second = edit.run_edit(image, [first.layer], _opts(), edit.Progress(), backend)
    assert backend.kinds() == ["edit", "edit"] and not second.continued
    assert "made by an older plug-in" in second.reason
    texts_seen = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("made by an older plug-in" in t for t in texts_seen)
    assert parasite.read_record(second.layer) is not None    # the new result can be continued


def test_a_changed_colour_is_named_in_the_status_line() -> None:
    """The backend's local colour figure (protocol 4): a reconstruction that is good on average but turned
    an eye blue is said to have changed a colour, with what keeps it (PTI); a small one is not named."""
    from draggan_wire import protocol

    backend = FakeBackend(psnr=27.0, stlpips=0.03)
    image, layer = _scene()
    real = backend._crop_result

    def with_colour(*args, **kw):
        result = real(*args, **kw)
        if result.inversion is not None:
            result.inversion = protocol.InversionQuality(27.0, 0.03, colour=33.0, colour_at=(8, 9))
        return result

    backend._crop_result = with_colour  # type: ignore[method-assign]
    out = edit.run_edit(image, [layer], _opts(), edit.Progress(), backend)
    done = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"][-1]
    assert not out.poor_inversion and "changed a colour somewhere (delta E 33" in done and "PTI" in done
    assert "changed a colour" not in texts.quality_text(27.0, 0.03, None, texts.COLOUR_NOTICE - 1)
