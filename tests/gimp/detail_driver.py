"""Runs INSIDE the real GIMP 3: one edit with the plug-in's defaults (the picture's own detail) on the
built-in model, on a 1024 px layer with a selection.

Environment: OUT (shared with the host), ENDPOINT (the real backend). Reads OUT/input.png and
OUT/edit.json ({"handles": [[x, y], ...], "targets": [...], "selection": [x, y, w, h]}, image
coordinates), makes the path and the rectangular selection, runs python-fu-draggan with the model
faces-128 and every other option at its default, and dumps the photo before and after, the result
layer and its mask, and the result layer's rectangle into OUT/report.json.
"""

import json
import os

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402
from gimp_kit import describe, dump, load_image, new_path, pixels, record_result, reporting, run_procedure  # noqa: E402

OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]

with reporting(os.path.join(OUT, "report.json")) as report:
    with open(os.path.join(OUT, "edit.json")) as fh:
        edit = json.load(fh)
    image = load_image(OUT)
    photo = image.get_layers()[0]
    photo.set_name("Photo")
    new_path(image, "drag points", [[tuple(h), tuple(t)] for h, t in zip(edit["handles"], edit["targets"])])
    Gimp.context_set_antialias(False)
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *edit["selection"])
    dump(OUT, "photo-before.rgba", pixels(photo))
    timings = []
    status, result, error = run_procedure(image, photo, ENDPOINT, "faces-128", timeout_s=600, timings=timings)
    report["edit"] = {"status": status, "error": error, "layers": describe(image), "seconds": timings}
    if result is not None:
        report["edit"].update(record_result(image, photo, result, OUT))
    image.delete()
