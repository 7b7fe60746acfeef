"""The procedure's arguments: one table used for PDB registration, the dialog and reading values.

Non-interactive PDB calls take exactly these arguments (after run-mode, image, drawables), in this
order; the dialog shows them in the same order and GIMP remembers the last values.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from . import geometry

PROCEDURE_NAME = "python-fu-draggan"
MENU_PATH = "<Image>/Filters/Generic"
MENU_LABEL = "_DragGAN (Drag Points)..."
PANEL_PROCEDURE_NAME = "python-fu-draggan-panel"   # the live panel: interactive only
PANEL_MENU_LABEL = "DragGAN _Panel..."
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
MODEL_MASK_STRENGTH = -1.0  # mask strength "the model's own": the request carries no lambda_mask
CONFIG_FILE = "draggan.json"   # optional, beside draggan.py; written by install.py --remote


@dataclass(frozen=True)
class Arg:
    """One PDB argument. kind: path | string | int | double | boolean | choice."""

    name: str
    kind: str
    label: str
    help: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str, str], ...] = ()   # (nick, label, help)


LATENT_CHOICES = (
    ("w+", "W+ (one latent per layer: more freedom)", "Optimise the first layers' latents separately"),
    ("w", "W (one latent: stays closer to the model)", "Optimise a single latent shared by every layer"),
)
PRESET_CHOICES = (
    ("fast", "Fast", "Fewer inversion steps (seconds on a GPU)"),
    ("quality", "Quality", "More inversion steps: a closer reconstruction, slower"),
)
CROP_CHOICES = (
    (geometry.CROP_AUTO, "Auto (around points and selection)",
     "A model-shaped crop around the drag points and the selection, with a margin"),
    (geometry.CROP_LAYER, "Whole layer (largest model-shaped crop)",
     "As much of the layer as the model's shape allows, centred on the points"),
    (geometry.CROP_SELECTION, "Selection bounds",
     "The selection's bounding box, grown to the model's shape"),
)

ALIGN_AUTO = "auto"
ALIGN_OFF = "off"
ALIGN_CHOICES = (
    (ALIGN_AUTO, "Auto (align faces for face models)",
     "For a model trained on aligned faces (e.g. ffhq-512), the backend finds the face, rotates and "
     "scales it as in the model's training data, edits there and puts the result back exactly; "
     "other models are not affected"),
    (ALIGN_OFF, "Off", "Send the crop as it is, scaled to the model's size"),
)

PTI_AUTO, PTI_ON, PTI_OFF = "auto", "on", "off"
PTI_CHOICES = (
    (PTI_AUTO, "Auto (the model's own)",
     "Pivotal tuning where the model needs it to reproduce the picture (the built-in faces-128), not for "
     "the others"),
    (PTI_ON, "On", "Also fine-tune the model on this picture: a much closer likeness, slower"),
    (PTI_OFF, "Off", "Invert into the model only: quicker, the model's idea of the picture"),
)

RESULT_DETAIL, RESULT_MODEL = "detail", "model"
RESULT_CHOICES = (
    (RESULT_DETAIL, "Keep the picture's detail",
     "Your layer's own pixels, moved the way the drag moved the content, at the layer's resolution; the "
     "model's pixels only where the drag made something new (an opened mouth)"),
    (RESULT_MODEL, "Model's pixels", "The model's picture after the drag, scaled to the layer"),
)

REGION_POINTS, REGION_WHOLE = "points", "whole"
REGION_CHOICES = (
    (REGION_POINTS, "Around the points", "Without a selection the drag may move a box around its points"),
    (REGION_WHOLE, "Whole picture", "Without a selection the drag may move anything"),
)

ARGUMENTS: tuple[Arg, ...] = (
    Arg("path", "path", "Path with _drag points",
        "Path whose strokes hold handle/target anchor pairs; none = the active path"),
    Arg("backend-address", "string", "_Backend address",
        "ZeroMQ address of `draggan-backend serve`, e.g. tcp://127.0.0.1:5555", DEFAULT_ADDRESS),
    Arg("model", "string", "_Model",
        "Model name on the backend (see the list below); empty = the backend's first model", ""),
    Arg("max-steps", "int", "Max st_eps", "Most drag optimisation steps", 200, 1, 5000),
    Arg("latent", "choice", "Laten_t space", "Which latent is optimised", "w+", choices=LATENT_CHOICES),
    Arg("learning-rate", "double", "Learnin_g rate", "Step size of the drag optimisation",
        0.002, 0.00001, 1.0),
    Arg("mask-strength", "double", "Mask stre_ngth (-1: the model's own)",
        "How strongly the unselected area is held fixed: 0 = not at all, -1 = the model's own "
        "(5 for the built-in faces-128, the paper's 20 for the others)", MODEL_MASK_STRENGTH, -1.0, 10000.0),
    Arg("inversion-preset", "choice", "_Inversion", "How hard the photo is fitted to the model",
        "fast", choices=PRESET_CHOICES),
    Arg("pti", "choice", "_Pivotal tuning (PTI)",
        "Also fine-tune the model on this photo: much closer reconstruction, slower", PTI_AUTO,
        choices=PTI_CHOICES),
    Arg("result", "choice", "_Result", "What the result layer holds", RESULT_DETAIL, choices=RESULT_CHOICES),
    Arg("region", "choice", "Without a selection, _move", "What the drag may move when nothing is selected",
        REGION_POINTS, choices=REGION_CHOICES),
    Arg("crop-mode", "choice", "Crop: _what the model sees", "Which part of the layer the model sees",
        geometry.CROP_AUTO, choices=CROP_CHOICES),
    Arg("align", "choice", "Face _alignment",
        "Align the face as the model's training data was (models without an alignment: off)",
        ALIGN_AUTO, choices=ALIGN_CHOICES),
    Arg("backend-timeout", "int", "Backend timeo_ut (s)",
        "Give up when the backend says nothing for this long", 30, 1, 3600),
)


@dataclass(frozen=True)
class Options:
    """The values of ARGUMENTS for one run."""

    path: Any = None
    backend_address: str = DEFAULT_ADDRESS
    model: str = ""
    max_steps: int = 200
    latent: str = "w+"
    learning_rate: float = 0.002
    mask_strength: float = MODEL_MASK_STRENGTH  # the backend's per-model lambda (the paper's 20 by default)
    inversion_preset: str = "fast"
    pti: str = PTI_AUTO
    result: str = RESULT_DETAIL
    region: str = REGION_POINTS
    crop_mode: str = geometry.CROP_AUTO
    align: str = ALIGN_AUTO
    backend_timeout: int = 30


def read_plugin_config(plugin_dir: str) -> dict[str, Any]:
    """draggan.json beside the plug-in ({"address": ...}), {} when absent or unreadable."""
    try:
        with open(os.path.join(plugin_dir, CONFIG_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register_arguments(procedure: Any, Gimp: Any, GObject: Any, defaults: dict[str, Any] | None = None) -> None:
    """Add every argument of ARGUMENTS to a Gimp.Procedure (defaults may override a default)."""
    flags = GObject.ParamFlags.READWRITE
    defaults = defaults or {}
    for arg in ARGUMENTS:
        default = defaults.get(arg.name, arg.default)
        if arg.kind == "path":
            procedure.add_path_argument(arg.name, arg.label, arg.help, True, flags)
        elif arg.kind == "string":
            procedure.add_string_argument(arg.name, arg.label, arg.help, default, flags)
        elif arg.kind == "int":
            procedure.add_int_argument(arg.name, arg.label, arg.help, int(arg.minimum), int(arg.maximum),
                                       int(default), flags)
        elif arg.kind == "double":
            procedure.add_double_argument(arg.name, arg.label, arg.help, float(arg.minimum),
                                          float(arg.maximum), float(default), flags)
        elif arg.kind == "boolean":
            procedure.add_boolean_argument(arg.name, arg.label, arg.help, bool(default), flags)
        elif arg.kind == "choice":
            choice = Gimp.Choice.new()
            for number, (nick, label, help_text) in enumerate(arg.choices):
                choice.add(nick, number, label, help_text)
            procedure.add_choice_argument(arg.name, arg.label, arg.help, choice, default, flags)
        else:  # pragma: no cover - the table above is fixed
            raise ValueError(f"unknown argument kind {arg.kind!r}")


def read_options(config: Any) -> Options:
    """Options from a Gimp.ProcedureConfig (config.get_property(name) for each argument)."""
    values = {arg.name.replace("-", "_"): config.get_property(arg.name) for arg in ARGUMENTS}
    values["backend_address"] = (values["backend_address"] or DEFAULT_ADDRESS).strip()
    values["model"] = (values["model"] or "").strip()
    return Options(**values)


# DragGAN's radii are given "in pixels at 512" and scaled to the model: r1 (motion supervision)
# 3 and r2 (point tracking) 12, as the official code. Below ~86 px of model height r1 would round to
# 0 pixels, which the engine refuses, so small models get radii of at least 1 and 4 model pixels.
R1_AT_512 = 3.0
R2_AT_512 = 12.0


def radii_for(model_height: int) -> tuple[float, float]:
    """(r1, r2) in "pixels at 512" that are at least 1 and 4 pixels at the model's height."""
    per_pixel = 512.0 / max(1, model_height)
    r1 = max(R1_AT_512, 1.0 * per_pixel)
    r2 = max(R2_AT_512, 4.0 * per_pixel)
    return r1, r2


def edit_params(options: Options, model_size: tuple[int, int] = (512, 512), preview_every: int = 0) -> dict[str, Any]:
    """The protocol's EditParams fields for these options and model (previews off unless
    `preview_every` > 0: the panel's previews, placed in the crop's frame; PTI "auto" and mask
    strength -1 send no field: the model's own)."""
    r1, r2 = radii_for(model_size[1])
    params: dict[str, Any] = {
        "max_steps": int(options.max_steps),
        "lr": float(options.learning_rate),
        "latent": options.latent,
        "r1": r1,
        "r2": r2,
        "inversion": options.inversion_preset,
        "preview_every": 0,
        "region": options.region,
    }
    if preview_every > 0:
        params["preview_every"] = int(preview_every)
        params["preview_frame"] = "crop"
    if options.pti != PTI_AUTO:
        params["pti"] = options.pti == PTI_ON
    if options.mask_strength >= 0:  # negative: leave it to the model (no field)
        params["lambda_mask"] = float(options.mask_strength)
    return params
