"""Runs INSIDE the real GIMP 3 (tests/gimp/kit/run.sh --batch-file): drives python-fu-draggan through the PDB.

Environment: OUT (folder shared with the host), ENDPOINT (the real backend), DEAD_ENDPOINT (a port
where nothing listens). Reads OUT/input.png (made by the host test), then:

1. makes a layer "Photo" at offsets (10, 6), a path "drag points" with two strokes, a selection;
2. edit: calls the procedure on Photo; exports the composite, the Photo layer, the result layer
   and its mask;
3. drag again: a new one-stroke path inside the crop, the procedure on the result layer;
4. odd anchors: a path with three anchors -> error expected;
5. backend down: the good path, DEAD_ENDPOINT -> error expected.

Everything observed goes to OUT/report.json (the host asserts on it and on the exported files).
Raises at the end when something could not even be tried, so GIMP exits non-zero.
"""

import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402
from gimp_kit import (  # noqa: E402
    PROC,
    describe,
    dump,
    export_composite,
    load_image,
    new_path,
    pixels,
    record_result,
    reporting,
    run_procedure,
)

OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]
DEAD_ENDPOINT = os.environ["DEAD_ENDPOINT"]
STEPS = int(os.environ.get("DRAG_STEPS", "5"))


def call(image, drawable, address=ENDPOINT, timeout_s=120):
    """The procedure on ``drawable`` -> (status nick, result layer or None, error text).  The backend
    also offers the embedded default model (faces-128); these runs use its 'tiny' (a random model: its
    drags move no content a person would see, so the result is the model's pixels, which always change;
    detail_driver.py runs the picture's-own-pixels result on the built-in model)."""
    return run_procedure(image, drawable, address, "tiny", timeout_s=timeout_s, timings=timings, max_steps=STEPS,
                         result="model")


DRIVER_STARTED = time.monotonic()
with reporting(os.path.join(OUT, "report.json")) as report:
    timings = report["call_seconds"] = []
    registered = Gimp.get_pdb().lookup_procedure(PROC)
    if registered is not None:
        report["procedure"] = {"menu": list(registered.get_menu_paths()), "label": registered.get_menu_label(),
                               "arguments": [a.name for a in registered.get_arguments()],
                               "image_types": registered.get_image_types()}
    image = load_image(OUT)
    background = image.get_layers()[0]
    photo = background.copy()
    image.insert_layer(photo, None, 0)
    photo.set_name("Photo")
    photo.resize(80, 60, -10, -6)              # an 80x60 layer at image offsets (10, 6)
    drag_path = new_path(image, "drag points", [[(40.0, 30.0), (46.0, 32.0)], [(55.0, 40.0), (58.0, 36.0)]])
    Gimp.context_set_antialias(False)
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 34, 24, 30, 22)
    report["layers_before"] = describe(image)
    dump(OUT, "photo-before.rgba", pixels(photo))
    export_composite(image, OUT, "composite-before.png")

    # 2. the edit
    status, result, error = call(image, photo)
    report["edit"] = {"status": status, "error": error, "layers": describe(image)}
    if result is not None:
        report["edit"].update(record_result(image, photo, result, OUT))
        export_composite(image, OUT, "composite-after.png")
        _ok, non_empty, *bounds = Gimp.Selection.bounds(image)
        report["edit"]["selection_after"] = [non_empty, *bounds]

        # 3. drag again: one stroke inside the crop, on the result layer
        new_path(image, "again", [[(44.0, 31.0), (48.0, 33.0)]])
        status2, result2, error2 = call(image, result)
        report["again"] = {"status": status2, "error": error2, "layers": describe(image)}

    # 4. an odd number of anchors
    new_path(image, "odd", [[(40.0, 30.0), (46.0, 32.0), (50.0, 35.0)]])
    before = len(image.get_layers())
    status, _layer, error = call(image, photo)
    report["odd"] = {"status": status, "error": error, "new_layers": len(image.get_layers()) - before}

    # 5. the backend is down
    image.set_selected_paths([drag_path])
    before = len(image.get_layers())
    status, _layer, error = call(image, photo, address=DEAD_ENDPOINT, timeout_s=2)
    report["down"] = {"status": status, "error": error, "new_layers": len(image.get_layers()) - before}
    dump(OUT, "photo-end.rgba", pixels(photo))

    image.delete()
    report["driver_seconds"] = round(time.monotonic() - DRIVER_STARTED, 2)
