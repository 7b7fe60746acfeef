"""The thin GIMP entry file draggan.py (staged copy) on the fake Gimp: registration, and that every
failure becomes a status with a message, never an exception escaping into GIMP."""

from __future__ import annotations

import importlib.util

import pytest
from draggan_core import edit, options

from . import fakegimp
from .conftest import PLUGIN_DIR


@pytest.fixture()
def entry():
    spec = importlib.util.spec_from_file_location("draggan_entry", PLUGIN_DIR / "draggan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_registers_the_filter_and_the_panel_and_calls_main(entry) -> None:
    assert fakegimp.main_calls[-1][0] == "GimpPlugIn"
    plugin = entry.DragGAN()
    assert plugin.do_query_procedures() == ["python-fu-draggan", "python-fu-draggan-panel"]
    for name, label in (("python-fu-draggan", "_DragGAN (Drag Points)..."),
                        ("python-fu-draggan-panel", "DragGAN _Panel...")):
        proc = plugin.do_create_procedure(name)
        calls = dict((call, args) for call, args in proc.calls)
        assert calls["add_menu_path"] == ("<Image>/Filters/Generic",) and calls["set_menu_label"] == (label,)
        assert calls["set_image_types"] == ("RGB*, GRAY*",)
        declared = [args[0] for call, args in proc.calls if call.endswith("_argument")]
        assert declared == [a.name for a in options.ARGUMENTS]   # the panel shows the filter's settings
        assert calls["add_layer_return_value"][0] == "result-layer"


def test_the_panel_is_interactive_only(entry) -> None:
    image, layer = fakegimp.make_photo(40, 40)
    proc = fakegimp.FakeProcedure("python-fu-draggan-panel")
    status, error = entry.run_panel(proc, "NONINTERACTIVE", image, [layer], Config(), None)
    assert status == "CALLING_ERROR" and "python-fu-draggan," in error.message


class Config:
    def get_property(self, name):
        return next(a.default for a in options.ARGUMENTS if a.name == name)


def _run(entry, image, layer):
    proc = fakegimp.FakeProcedure("python-fu-draggan")
    return entry.run(proc, "NONINTERACTIVE", image, [layer], Config(), None)


def test_bad_input_is_a_calling_error_with_the_message(entry) -> None:
    image, layer = fakegimp.make_photo(40, 40)
    fakegimp.add_path(image, [[(5.0, 5.0)]], "odd")
    status, error = _run(entry, image, layer)
    assert status == "CALLING_ERROR" and "has 1 anchor, an odd number" in error.message
    assert ("progress_end",) in fakegimp.log


def test_a_bug_is_an_execution_error_not_a_traceback(entry, monkeypatch) -> None:
    image, layer = fakegimp.make_photo(40, 40)

    def broken(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(edit, "run_edit", broken)
    status, error = _run(entry, image, layer)
    assert status == "EXECUTION_ERROR"
    assert "unexpected error (ZeroDivisionError: oops)" in error.message and "not changed" in error.message


def test_success_returns_the_new_layer(entry, monkeypatch) -> None:
    image, layer = fakegimp.make_photo(40, 40)
    made = fakegimp.Layer(image, "new", 4, 4)
    monkeypatch.setattr(edit, "run_edit", lambda *a, **k: edit.EditOutcome(made, None, False, False, ""))
    values = _run(entry, image, layer)
    assert values[0] == "SUCCESS" and values[1].value is made
    assert ("displays_flush",) in fakegimp.log
