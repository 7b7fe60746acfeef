"""The dialog's Model field: a combo box of the models the backend reports (with a sensible
preselection), a free-text entry when the backend cannot be asked."""

from __future__ import annotations

from draggan_core import dialog, link

from .scripted_router import refused_loopback_address


def _models() -> list[link.ModelChoice]:
    return [link.ModelChoice("small", 64, 32, False), link.ModelChoice("tiny", 32, 32, True),
            link.ModelChoice("faces-128", 128, 128, True)]


def test_the_remembered_model_is_kept_when_the_backend_still_serves_it() -> None:
    assert dialog.model_combo_plan(_models(), "faces-128") == (["small", "tiny", "faces-128"], 2)
    assert dialog.model_combo_plan(_models(), "small") == (["small", "tiny", "faces-128"], 0)


def test_default_is_the_first_loaded_model_else_the_first_listed() -> None:
    names = ["small", "tiny", "faces-128"]
    assert dialog.model_combo_plan(_models(), "") == (names, 1)               # "" = the backend's choice
    assert dialog.model_combo_plan(_models(), "ffhq-512") == (names, 1)       # no longer served
    cold = [link.ModelChoice("a", 8, 8, False), link.ModelChoice("b", 8, 8, False)]
    assert dialog.model_combo_plan(cold, "") == (["a", "b"], 0)
    assert dialog.model_combo_plan([], "x") == ([], -1)


def test_unreachable_backend_leaves_the_free_text_field() -> None:
    with refused_loopback_address() as address:
        models, text = dialog.backend_models(address, 0.3)
    assert models is None                      # show() keeps GIMP's text entry for the Model field
    assert text.startswith("Backend not reachable now: ")
