"""User-facing errors. Every message says what is wrong and what to do about it."""

from __future__ import annotations


class PluginError(Exception):
    """An error shown to the user as a GIMP error message (no traceback).

    `calling` is True for problems with the arguments or the image (PDB CALLING_ERROR),
    False for problems while running (EXECUTION_ERROR: backend, network, server).
    """

    def __init__(self, message: str, calling: bool = False, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.calling = calling
        self.code = code   # the protocol's error code behind it, where there was one ("unavailable", ...)


HOW_TO_DRAW = (
    "Draw the drag points with the Paths tool (B): click a handle (the point to move), then its "
    "target (where it should go); press Shift and click to start the next pair as a new stroke. "
    "Each stroke holds pairs of anchors: 1st = handle, 2nd = target, 3rd = handle, ..."
)


def no_path() -> PluginError:
    return PluginError("DragGAN: the image has no path. " + HOW_TO_DRAW, calling=True)


def no_strokes(path_name: str) -> PluginError:
    return PluginError(f"DragGAN: the path '{path_name}' has no strokes. " + HOW_TO_DRAW, calling=True)


def odd_anchors(path_name: str, stroke_number: int, anchors: int) -> PluginError:
    return PluginError(
        f"DragGAN: stroke {stroke_number} of path '{path_name}' has {anchors} anchor{'s' if anchors != 1 else ''}, "
        "an odd number; "
        "each handle needs its target. Add the missing target anchor or delete the last one. "
        + HOW_TO_DRAW,
        calling=True,
    )


def point_outside_layer(kind: str, number: int, x: float, y: float, layer_name: str,
                        rect: tuple[int, int, int, int]) -> PluginError:
    lx, ly, lw, lh = rect
    return PluginError(
        f"DragGAN: {kind} {number} at ({x:.1f}, {y:.1f}) lies outside the layer '{layer_name}' "
        f"(image x {lx}..{lx + lw}, y {ly}..{ly + lh}). Move the anchor onto the layer or pick the "
        "layer that holds the picture.",
        calling=True,
    )


def wrong_drawables(count: int) -> PluginError:
    return PluginError(
        f"DragGAN works on exactly one selected layer; {count} drawables are selected. "
        "Select only the layer with the photo in the Layers dock.",
        calling=True,
    )


def not_a_layer() -> PluginError:
    return PluginError(
        "DragGAN works on a layer, not on a layer mask or channel. Click the layer's thumbnail "
        "(not its mask) in the Layers dock.",
        calling=True,
    )


def points_too_far_apart(span_w: float, span_h: float, crop_w: int, crop_h: int,
                         model_w: int, model_h: int) -> PluginError:
    return PluginError(
        f"DragGAN: the drag points span {span_w:.0f}x{span_h:.0f} px, but the largest crop with the "
        f"model's shape ({model_w}x{model_h}) that fits in the layer is {crop_w}x{crop_h} px. "
        "Draw the handles and targets closer together, or enlarge the layer (Layer > Layer to Image Size).",
        calling=True,
    )


def points_too_far_apart_to_align(span_w: float, span_h: float, max_side: int) -> PluginError:
    return PluginError(
        f"DragGAN: the drag points span {span_w:.0f}x{span_h:.0f} px, but a face is aligned from a "
        f"region of at most {max_side}x{max_side} px around them. Draw the handles and targets closer "
        "together (on one face), or set Face alignment to Off.",
        calling=True,
    )


def points_outside_selection_crop() -> PluginError:
    return PluginError(
        "DragGAN: with crop mode 'selection bounds' every handle and target must lie inside the "
        "selection's bounding box. Enlarge the selection or use crop mode 'auto'.",
        calling=True,
    )


def selection_mode_without_selection() -> PluginError:
    return PluginError(
        "DragGAN: crop mode 'selection bounds' needs a selection on the layer. Select the region "
        "to edit (e.g. with the Rectangle or Free Select tool) or use crop mode 'auto'.",
        calling=True,
    )


def floating_selection() -> PluginError:
    return PluginError(
        "DragGAN: the image has a floating selection (a pasted layer). Anchor it (Layer > Anchor Layer) "
        "or make it a new layer (Layer > To New Layer), then run the filter again.",
        calling=True,
    )


def selection_outside_crop() -> PluginError:
    return PluginError(
        "DragGAN: the selection lies outside the part of the layer the model sees (around the drag "
        "points), so nothing could move. Select the region around the points, select nothing "
        "(Select > None) to let the whole crop move, or use crop mode 'auto'.",
        calling=True,
    )


def layer_too_small(w: int, h: int) -> PluginError:
    return PluginError(
        f"DragGAN: the layer is only {w}x{h} px; it needs at least 8x8 px.", calling=True
    )


def unknown_path(name: str) -> PluginError:
    return PluginError(
        f"DragGAN: the chosen path '{name}' does not belong to this image. Pick one of the image's "
        "paths in the dialog or leave the path empty to use the active path.",
        calling=True,
    )


def pyzmq_missing(detail: str) -> PluginError:
    return PluginError(
        "DragGAN needs the Python package pyzmq inside GIMP's Python, and it could not be imported "
        f"({detail}). Fix: run `python install.py --plugin-only` from the DragGAN folder (it places "
        "pyzmq next to the plug-in), or install it for GIMP's Python (Linux: `sudo apt install "
        "python3-zmq`; Flatpak/Windows/macOS: see README, section 'pyzmq'), then restart GIMP.",
    )


def wire_missing(detail: str) -> PluginError:
    return PluginError(
        "DragGAN: part of the plug-in (draggan_core/ or draggan_wire/) is missing or broken "
        f"({detail}). Reinstall the plug-in with `python install.py --plugin-only`, then restart GIMP.",
    )


def backend_unreachable(address: str, seconds: float, detail: str = "") -> PluginError:
    extra = f" ({detail})" if detail else ""
    return PluginError(
        f"DragGAN: no answer from the backend at {address} within {seconds:.0f} s{extra}. "
        "Start it with `draggan-backend serve` on the machine with the GPU (or check the address "
        "in the dialog, e.g. tcp://127.0.0.1:5555, and any SSH tunnel), then run the filter again.",
    )


def backend_failed(address: str, message: str) -> PluginError:
    return PluginError(f"DragGAN: the backend at {address} reported an error: {message}")


def backend_busy(address: str, message: str) -> PluginError:
    return PluginError(
        f"DragGAN: the backend at {address} is busy ({message}). Wait for the running edit to "
        "finish, then run the filter again."
    )


def model_not_available(model: str, available: list[str], detail: str = "") -> PluginError:
    names = ", ".join(available) if available else "none"
    extra = f" {detail}" if detail else ""
    return PluginError(
        f"DragGAN: the backend has no model '{model}' (installed: {names}).{extra} Choose one of "
        "the installed models in the dialog, or install it on the server with "
        f"`python install.py --model {model}`.",
        calling=True,
    )


def cancelled() -> PluginError:
    return PluginError("DragGAN: the edit was cancelled; the image was not changed.")
