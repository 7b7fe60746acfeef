"""Argument table (registration, reading, protocol params), session parasite, continue/re-invert."""

from __future__ import annotations

from typing import Any

from draggan_core import decision, geometry, options, parasite
from draggan_core.geometry import Rect

from draggan_wire import protocol

from . import fakegimp


class RecordingProcedure:
    def __init__(self) -> None:
        self.args: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("add_"):
            raise AttributeError(name)
        return lambda *a: self.args.append((name, a))


def test_registration_follows_the_table_in_order_with_defaults() -> None:
    proc = RecordingProcedure()
    options.register_arguments(proc, fakegimp.Gimp, fakegimp.GObject, {"backend-address": "tcp://gpu:7000"})
    names = [a[1][0] for a in proc.args]
    assert names == ["path", "backend-address", "model", "max-steps", "latent", "learning-rate",
                     "mask-strength", "inversion-preset", "pti", "result", "region", "crop-mode", "align",
                     "backend-timeout"]
    by_name = {a[1][0]: a for a in proc.args}
    assert by_name["path"][0] == "add_path_argument" and by_name["path"][1][3] is True   # none_ok
    assert by_name["backend-address"][1][3] == "tcp://gpu:7000"
    kind, args = by_name["crop-mode"]
    assert kind == "add_choice_argument" and args[4] == "auto"
    assert [e[0] for e in args[3].entries] == ["auto", "layer", "selection"]
    kind, args = by_name["max-steps"]
    assert kind == "add_int_argument" and args[3:6] == (1, 5000, 200)
    kind, args = by_name["align"]   # face alignment (protocol 3): auto by default, off for the old way
    assert kind == "add_choice_argument" and args[4] == "auto"
    assert [e[0] for e in args[3].entries] == ["auto", "off"]
    # protocol 4: the picture's own detail by default, the model's pixels on request
    kind, args = by_name["result"]
    assert kind == "add_choice_argument" and args[4] == "detail"
    assert [e[0] for e in args[3].entries] == list(protocol.RESULT_MODES)
    kind, args = by_name["region"]
    assert kind == "add_choice_argument" and args[4] == "points"
    assert [e[0] for e in args[3].entries] == list(protocol.REGIONS)
    kind, args = by_name["pti"]   # the model's own by default (faces-128 tunes, official models do not)
    assert kind == "add_choice_argument" and args[4] == "auto"
    assert [e[0] for e in args[3].entries] == ["auto", "on", "off"]


class FakeConfig:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get_property(self, name: str) -> Any:
        return self.values[name]


def test_read_options_and_protocol_params_validate() -> None:
    values = {a.name: a.default for a in options.ARGUMENTS}
    values.update({"backend-address": "  tcp://127.0.0.1:6000 ", "model": " tiny ", "latent": "w",
                   "max-steps": 17, "pti": "on", "result": "model", "region": "whole"})
    opts = options.read_options(FakeConfig(values))
    assert opts.backend_address == "tcp://127.0.0.1:6000" and opts.model == "tiny"
    params = options.edit_params(opts)
    # the protocol's own validation accepts exactly these fields
    parsed = protocol.EditParams.from_fields(params)
    assert parsed.max_steps == 17 and parsed.latent == "w" and parsed.pti is True
    assert parsed.preview_every == 0 and parsed.region == "whole" and opts.result == "model"
    # PTI "auto" sends no field (the model's own), "off" sends false
    for choice, sent in (("auto", None), ("off", False)):
        values["pti"] = choice
        assert protocol.EditParams.from_fields(options.edit_params(options.read_options(FakeConfig(values)))).pti \
            is sent
    values["pti"] = "on"
    assert (parsed.r1, parsed.r2) == (3.0, 12.0)          # the official radii for 512 px models
    for height in (32, 64, 128, 256, 512, 1024):
        r1, r2 = options.radii_for(height)
        assert round(r1 / 512 * height) >= 1 and round(r2 / 512 * height) >= 4 and r1 >= 3.0
        protocol.EditParams.from_fields(options.edit_params(opts, (height, height)))
    values["backend-address"] = ""
    assert options.read_options(FakeConfig(values)).backend_address == options.DEFAULT_ADDRESS


def test_mask_strength_defaults_to_the_models_own() -> None:
    """The dialog's default (-1) sends no lambda_mask, so the server uses the model's own weight (5 on
    faces-128, the paper's 20 elsewhere); any value >= 0, 0 included, is sent as the user's."""
    values = {a.name: a.default for a in options.ARGUMENTS}
    assert values["mask-strength"] == options.MODEL_MASK_STRENGTH < 0
    params = options.edit_params(options.read_options(FakeConfig(values)))
    assert "lambda_mask" not in params and protocol.EditParams.from_fields(params).lambda_mask is None
    for chosen in (0.0, 20.0, 2.5):
        values["mask-strength"] = chosen
        params = options.edit_params(options.read_options(FakeConfig(values)))
        assert protocol.EditParams.from_fields(params).lambda_mask == chosen


def test_plugin_config_file(tmp_path) -> None:
    assert options.read_plugin_config(str(tmp_path)) == {}
    (tmp_path / options.CONFIG_FILE).write_text('{"address": "tcp://10.0.0.2:5555"}')
    assert options.read_plugin_config(str(tmp_path))["address"] == "tcp://10.0.0.2:5555"
    (tmp_path / options.CONFIG_FILE).write_text("not json")
    assert options.read_plugin_config(str(tmp_path)) == {}


RECORD = parasite.SessionRecord("tcp://127.0.0.1:5555", "sess-1", Rect(10, 20, 128, 64), "faces-128",
                                (128, 64), pti="on", region=Rect(10, 20, 128, 64))


def test_parasite_round_trip_on_a_layer() -> None:
    image, layer = fakegimp.make_photo(8, 8)
    assert parasite.read_record(layer) is None
    parasite.attach_record(layer, RECORD, fakegimp.Gimp)
    stored = layer.get_parasite(parasite.PARASITE_NAME)
    assert stored.get_flags() == fakegimp.Gimp.PARASITE_PERSISTENT | fakegimp.Gimp.PARASITE_UNDOABLE
    assert isinstance(stored.get_data(), list)        # GIMP hands parasite data back as a list of ints
    assert parasite.read_record(layer) == RECORD


def test_damaged_records_read_as_none() -> None:
    good = parasite.encode_record(RECORD)
    assert parasite.decode_record(good) == RECORD
    assert b'"v": 4' in good
    for bad in (b"", b"{", b"[]", good.replace(b'"v": 4', b'"v": 5'), good.replace(b'"v": 4', b'"v": 3'),
                good.replace(b'"v": 4', b'"v": 1'), good.replace(b"128, 64]", b"0, 64]"),
                good.replace(b'"sess-1"', b'""'), b'{"v": 4}', bytes([0xff, 0xfe]),
                good.replace(b'"frame": "crop"', b'"frame": "model"'),          # protocol 3's model frame
                good.replace(b'"frame": "crop"', b'"frame": "sideways"'),
                good.replace(b'"pti": "on"', b'"pti": true'),                   # protocol 3's boolean
                good.replace(b'"region": [10, 20, 128, 64]', b'"region": [0, 0, 0, 5]')):
        assert parasite.decode_record(bad) is None, bad
    # version 3, 2 and 1 records are "outdated": the next drag inverts anew and says why
    for older in (b'"v": 3', b'"v": 2', b'"v": 1'):
        assert parasite.is_outdated(good.replace(b'"v": 4', older))
    assert not parasite.is_outdated(good)


def test_aligned_record_round_trip() -> None:
    native = parasite.SessionRecord("tcp://127.0.0.1:5555", "sess-2", Rect(30, 40, 50, 60), "ffhq-512",
                                    (512, 512), "off", parasite.FRAME_CROP, Rect(0, 0, 400, 300), aligned=True)
    back = parasite.decode_record(parasite.encode_record(native))
    assert back == native and back is not None and back.native and back.aligned and not RECORD.aligned


def test_decision_continue_only_when_everything_matches() -> None:
    crop = RECORD.crop
    inside = [(20.0, 30.0), (100.0, 70.0)]
    d = decision.decide(RECORD, crop, "tcp://localhost:5555", "", "on", inside)
    assert d.continue_session and "no re-inversion" in d.reason and d.record == RECORD
    assert decision.decide(RECORD, crop, "tcp://127.0.0.1:5555", "faces-128", "on", inside).continue_session
    cases = {
        "no previous": decision.decide(None, crop, RECORD.address, "", "on", inside),
        "lives on": decision.decide(RECORD, crop, "tcp://10.0.0.9:5555", "", "on", inside),
        "model 'other'": decision.decide(RECORD, crop, RECORD.address, "other", "on", inside),
        "PTI setting": decision.decide(RECORD, crop, RECORD.address, "", "auto", inside),
        "moved or resized": decision.decide(RECORD, Rect(11, 20, 128, 64), RECORD.address, "", "on", inside),
        "outside the previous": decision.decide(RECORD, crop, RECORD.address, "", "on",
                                                inside + [(5.0, 30.0)]),
    }
    for words, d in cases.items():
        assert not d.continue_session and ("new edit" in d.reason or "inverting anew" in d.reason)
        assert words in d.reason or (words == "no previous" and "new edit" in d.reason), (words, d.reason)


def test_mask_modes_constants_are_the_dialog_choices() -> None:
    crop_arg = next(a for a in options.ARGUMENTS if a.name == "crop-mode")
    assert tuple(c[0] for c in crop_arg.choices) == geometry.CROP_MODES
    latent_arg = next(a for a in options.ARGUMENTS if a.name == "latent")
    assert tuple(c[0] for c in latent_arg.choices) == protocol.LATENT_SPACES[::-1]
    preset_arg = next(a for a in options.ARGUMENTS if a.name == "inversion-preset")
    assert tuple(c[0] for c in preset_arg.choices) == protocol.INVERSION_PRESETS
    result_arg = next(a for a in options.ARGUMENTS if a.name == "result")
    assert tuple(c[0] for c in result_arg.choices) == protocol.RESULT_MODES
    region_arg = next(a for a in options.ARGUMENTS if a.name == "region")
    assert tuple(c[0] for c in region_arg.choices) == protocol.REGIONS
