"""Runs INSIDE the real GIMP 3 (tests/gimp/kit/run.sh --batch-file): an aligned edit of a tilted face photo.

Environment: OUT (folder shared with the host), ENDPOINT (the real backend serving 'tinyface',
flagged alignment ffhq). Reads OUT/input.png (scikit-image's astronaut rotated by 20 degrees, made
by the host test), then:

1. makes a layer "Photo" of 260x260 at image offsets (120, 40), so the face's FFHQ quad runs over
   the layer's left and top edges (the backend pads there and must mask the padding out);
2. a one-stroke path nose -> a little right and up, and calls the procedure with model 'tinyface'
   and Face alignment left at its default (auto); dumps Photo before/after, the result's RGBA and
   its mask;
3. drag again on the result layer (the stored transform is reused).

Everything observed goes to OUT/align-report.json.
"""

import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402
from gimp_kit import PROC, describe, dump, load_image, new_path, pixels, record_result, reporting, run_procedure  # noqa: E402

OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]
HANDLE = (180.5, 147.0)    # the nose, image coordinates
TARGET = (186.0, 145.0)


def call(image, drawable):
    return run_procedure(image, drawable, ENDPOINT, "tinyface", max_steps=3)


with reporting(os.path.join(OUT, "align-report.json")) as report:
    registered = Gimp.get_pdb().lookup_procedure(PROC)
    report["arguments"] = [a.name for a in registered.get_arguments()]
    image = load_image(OUT)
    background = image.get_layers()[0]
    photo = background.copy()
    image.insert_layer(photo, None, 0)
    photo.set_name("Photo")
    photo.resize(260, 260, -120, -40)
    new_path(image, "drag points", [[HANDLE, TARGET]])
    dump(OUT, "photo-before.rgba", pixels(photo))
    started = time.monotonic()
    status, result, error = call(image, photo)
    report["edit"] = {"status": status, "error": error, "layers": describe(image),
                      "seconds": round(time.monotonic() - started, 2)}
    if result is not None:
        report["edit"].update(record_result(image, photo, result, OUT))
        new_path(image, "again", [[(182.0, 150.0), (184.0, 151.0)]])
        status2, result2, error2 = call(image, result)
        report["again"] = {"status": status2, "error": error2, "layers": describe(image)}
        if result2 is not None:
            dump(OUT, "again.rgba", pixels(result2))
    dump(OUT, "photo-end.rgba", pixels(photo))
    image.delete()
