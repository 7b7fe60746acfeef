"""A small fake of `gi.repository` (Gimp, Gegl, GLib, GObject) for the plug-in's fast tests.

It models only what the plug-in uses, with real pixel storage so that tests can check what was
read and written: images with layers (top first), an image-sized selection channel, paths with
bezier anchors, buffers with the babl formats the plug-in uses ("R'G'B' u8", "R'G'B'A u8",
"Y u8", "Y' u8"), nearest-neighbour `Image.scale`, layer masks from the selection, parasites,
undo groups and progress calls (recorded in `log`).

`install()` puts the fake into sys.modules as `gi` and `gi.repository`; the real GIMP tests in
tests/gimp cover the real library.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import types
from typing import Any

log: list[tuple[Any, ...]] = []          # (call name, args...) of interesting calls, in order
progress_result: dict[str, Any] = {"value": True}   # what Gimp.progress_* return (False = GIMP gone)
_ids = [0]


def _next_id() -> int:
    _ids[0] += 1
    return _ids[0]


# ------------------------------------------------------------------------------------------
# Gegl


class _Rectangle:
    def __init__(self, x: int, y: int, w: int, h: int) -> None:
        self.x, self.y, self.width, self.height = int(x), int(y), int(w), int(h)


class _RectangleFactory:
    @staticmethod
    def new(x: int, y: int, w: int, h: int) -> _Rectangle:
        return _Rectangle(x, y, w, h)


class _Color:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def new(cls, name: str) -> _Color:
        return cls(name)


Gegl = types.ModuleType("gi.repository.Gegl")
Gegl.Rectangle = _RectangleFactory
Gegl.Color = _Color
Gegl.AbyssPolicy = types.SimpleNamespace(NONE="none", CLAMP="clamp")


# ------------------------------------------------------------------------------------------
# Pixel storage: every drawable keeps `channels` bytes per pixel (4 for layers, 1 for channels).

FORMAT_CHANNELS = {"R'G'B' u8": 3, "R'G'B'A u8": 4, "Y u8": 1, "Y' u8": 1}


def _convert_pixel(px: bytes, to_channels: int) -> bytes:
    n = len(px)
    if n == to_channels:
        return px
    if n == 4 and to_channels == 3:
        return px[:3]
    if n == 3 and to_channels == 4:
        return px + b"\xff"
    if n in (3, 4) and to_channels == 1:
        return bytes([round((px[0] + px[1] + px[2]) / 3)])
    if n == 1 and to_channels == 3:
        return px * 3
    if n == 1 and to_channels == 4:
        return px * 3 + b"\xff"
    raise ValueError(f"cannot convert {n} to {to_channels} channels")


class Buffer:
    def __init__(self, drawable: Drawable) -> None:
        self.drawable = drawable
        self.flushed = 0

    def get(self, rect: _Rectangle, scale: float, fmt: str, abyss: str) -> bytes:
        d = self.drawable
        out = bytearray()
        want = FORMAT_CHANNELS[fmt]
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                if 0 <= x < d.width and 0 <= y < d.height:
                    px = d.pixel(x, y)
                elif abyss == "clamp":
                    px = d.pixel(min(max(x, 0), d.width - 1), min(max(y, 0), d.height - 1))
                else:
                    px = bytes(d.channels)
                out += _convert_pixel(px, want)
        return bytes(out)

    def set(self, rect: _Rectangle, fmt: str, data: bytes) -> None:
        d = self.drawable
        n = FORMAT_CHANNELS[fmt]
        if len(data) != rect.width * rect.height * n:
            raise ValueError(f"buffer.set: {len(data)} bytes for {rect.width}x{rect.height}x{n}")
        d.writes += 1
        i = 0
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                if 0 <= x < d.width and 0 <= y < d.height:
                    d.set_pixel(x, y, _convert_pixel(bytes(data[i:i + n]), d.channels))
                i += n

    def flush(self) -> None:
        self.flushed += 1


class Parasite:
    def __init__(self, name: str, flags: int, data: bytes) -> None:
        self._name, self._flags, self._data = name, flags, list(bytes(data))

    @classmethod
    def new(cls, name: str, flags: int, data: bytes) -> Parasite:
        return cls(name, flags, data)

    def get_data(self) -> list[int]:
        return list(self._data)

    def get_name(self) -> str:
        return self._name

    def get_flags(self) -> int:
        return self._flags


class Item:
    def __init__(self, image: Image | None, name: str) -> None:
        self.image = image
        self.name = name
        self.id = _next_id()
        self.parasites: dict[str, Parasite] = {}

    def get_name(self) -> str:
        return self.name

    def set_name(self, name: str) -> None:
        self.name = name

    def get_image(self) -> Image | None:
        return self.image

    def get_id(self) -> int:
        return self.id

    def attach_parasite(self, parasite: Parasite) -> bool:
        log.append(("attach_parasite", self.name, parasite.get_name()))
        self.parasites[parasite.get_name()] = parasite
        return True

    def get_parasite(self, name: str) -> Parasite | None:
        return self.parasites.get(name)


class Drawable(Item):
    def __init__(self, image: Image | None, name: str, width: int, height: int, channels: int,
                 fill: bytes | None = None) -> None:
        super().__init__(image, name)
        self.width, self.height, self.channels = int(width), int(height), channels
        self.data = bytearray((fill or bytes(channels)) * (self.width * self.height))
        self.offsets = (0, 0)
        self.writes = 0

    def pixel(self, x: int, y: int) -> bytes:
        i = (y * self.width + x) * self.channels
        return bytes(self.data[i:i + self.channels])

    def set_pixel(self, x: int, y: int, px: bytes) -> None:
        i = (y * self.width + x) * self.channels
        self.data[i:i + self.channels] = px

    def get_buffer(self) -> Buffer:
        return Buffer(self)

    def get_width(self) -> int:
        return self.width

    def get_height(self) -> int:
        return self.height

    def get_offsets(self) -> tuple[bool, int, int]:
        return (True, self.offsets[0], self.offsets[1])

    def set_offsets(self, x: int, y: int) -> bool:
        self.offsets = (int(x), int(y))
        return True

    def update(self, x: int, y: int, w: int, h: int) -> bool:
        return True

    def get_parent(self) -> None:
        return None

    def scaled(self, nw: int, nh: int) -> None:
        """Nearest-neighbour scaling in place (what Image.scale does to every item here)."""
        old = bytes(self.data)
        ow, oh, c = self.width, self.height, self.channels
        new = bytearray(nw * nh * c)
        for y in range(nh):
            sy = min(oh - 1, int((y + 0.5) * oh / nh))
            for x in range(nw):
                sx = min(ow - 1, int((x + 0.5) * ow / nw))
                j = (sy * ow + sx) * c
                new[(y * nw + x) * c:(y * nw + x + 1) * c] = old[j:j + c]
        self.width, self.height, self.data = nw, nh, new


class Channel(Drawable):
    def __init__(self, image: Image | None, name: str, width: int, height: int) -> None:
        super().__init__(image, name, width, height, 1)

    @classmethod
    def new(cls, image: Image, name: str, width: int, height: int, opacity: float, color: Any) -> Channel:
        return cls(image, name, width, height)


class LayerMask(Channel):
    pass


class Layer(Drawable):
    def __init__(self, image: Image, name: str, width: int, height: int, image_type: str = "RGBA_IMAGE",
                 fill: bytes | None = None) -> None:
        super().__init__(image, name, width, height, 4, fill or b"\x00\x00\x00\x00")
        self.image_type = image_type
        self.mask: LayerMask | None = None

    @classmethod
    def new(cls, image: Image, name: str, width: int, height: int, image_type: str, opacity: float,
            mode: str) -> Layer:
        log.append(("Layer.new", name, width, height, image_type))
        return cls(image, name, width, height, image_type)

    def create_mask(self, mask_type: str) -> LayerMask:
        assert mask_type == "SELECTION", mask_type
        image = self.image
        assert image is not None
        mask = LayerMask(image, self.name + " mask", self.width, self.height)
        ox, oy = self.offsets
        for y in range(self.height):
            for x in range(self.width):
                ix, iy = x + ox, y + oy
                if 0 <= ix < image.width and 0 <= iy < image.height:
                    mask.set_pixel(x, y, image.selection.pixel(ix, iy))
        return mask

    def add_mask(self, mask: LayerMask) -> bool:
        log.append(("add_mask", self.name))
        self.mask = mask
        return True

    def get_mask(self) -> LayerMask | None:
        return self.mask


class Path(Item):
    """A bezier path: strokes are lists of anchors (x, y)."""

    def __init__(self, image: Image, name: str) -> None:
        super().__init__(image, name)
        self.strokes: dict[int, list[tuple[float, float]]] = {}

    @classmethod
    def new(cls, image: Image, name: str) -> Path:
        return cls(image, name)

    def add_stroke(self, anchors: list[tuple[float, float]]) -> int:
        sid = len(self.strokes) + 1
        self.strokes[sid] = list(anchors)
        return sid

    def get_strokes(self) -> list[int]:
        return list(self.strokes)

    def stroke_get_points(self, stroke_id: int) -> tuple[str, list[float], bool]:
        floats: list[float] = []
        for x, y in self.strokes[stroke_id]:
            floats += [x - 1, y - 1, x, y, x + 1, y + 1]   # in-control, ANCHOR, out-control
        return ("BEZIER", floats, False)


class Image:
    def __init__(self, width: int, height: int, base_type: str = "RGB") -> None:
        self.width, self.height, self.base_type = int(width), int(height), base_type
        self.layers: list[Layer] = []
        self.channels: list[Channel] = []
        self.paths: list[Path] = []
        self.selected_paths: list[Path] = []
        self.selection = Channel(self, "selection", width, height)
        self.undo_depth = 0
        self.undo_groups = 0
        self.floating: Layer | None = None
        self.deleted = False
        self.id = _next_id()
        all_images.append(self)

    @classmethod
    def new(cls, width: int, height: int, base_type: str) -> Image:
        log.append(("Image.new", width, height))
        return cls(width, height, base_type)

    def get_id(self) -> int:
        return self.id

    def get_base_type(self) -> str:
        return self.base_type

    def get_width(self) -> int:
        return self.width

    def get_height(self) -> int:
        return self.height

    def delete(self) -> bool:
        log.append(("Image.delete", self.width, self.height))
        self.deleted = True
        return True

    # layers / channels / paths
    def insert_layer(self, layer: Layer, parent: Any, position: int) -> bool:
        log.append(("insert_layer", layer.name, position, self.undo_depth))
        layer.image = self
        self.layers.insert(position, layer)
        return True

    def get_layers(self) -> list[Layer]:
        return list(self.layers)

    def get_item_position(self, item: Item) -> int:
        return self.layers.index(item)  # type: ignore[arg-type]

    def insert_channel(self, channel: Channel, parent: Any, position: int) -> bool:
        self.channels.insert(position, channel)
        return True

    def remove_channel(self, channel: Channel) -> bool:
        self.channels.remove(channel)
        return True

    def insert_path(self, path: Path, parent: Any, position: int) -> bool:
        self.paths.insert(position, path)
        self.selected_paths = [path]
        return True

    def get_paths(self) -> list[Path]:
        return list(self.paths)

    def get_selected_paths(self) -> list[Path]:
        return list(self.selected_paths)

    def get_selection(self) -> Channel:
        return self.selection

    def get_floating_sel(self) -> Layer | None:
        return self.floating

    # selection
    def select_rectangle(self, op: str, x: float, y: float, w: float, h: float) -> bool:
        log.append(("select_rectangle", op, int(x), int(y), int(w), int(h), self.undo_depth))
        sel = self.selection
        for yy in range(self.height):
            for xx in range(self.width):
                inside = x <= xx < x + w and y <= yy < y + h
                old = sel.pixel(xx, yy)[0]
                if op == "REPLACE":
                    new = 255 if inside else 0
                elif op == "ADD":
                    new = 255 if inside else old
                elif op == "INTERSECT":
                    new = old if inside else 0
                else:
                    raise ValueError(op)
                sel.set_pixel(xx, yy, bytes([new]))
        return True

    def select_item(self, op: str, item: Drawable) -> bool:
        """A channel's values (image-sized), or a layer's alpha at its offsets (GIMP: the item's
        shape), REPLACE or INTERSECT (minimum) the selection."""
        log.append(("select_item", op, item.name))
        if isinstance(item, Layer):
            shape = bytearray(self.width * self.height)
            ox, oy = item.offsets
            for y in range(item.height):
                for x in range(item.width):
                    ix, iy = x + ox, y + oy
                    if 0 <= ix < self.width and 0 <= iy < self.height:
                        shape[iy * self.width + ix] = item.pixel(x, y)[3]
        else:
            shape = bytearray(item.data)
        if op == "REPLACE":
            self.selection.data = shape
        elif op == "INTERSECT":
            self.selection.data = bytearray(min(a, b) for a, b in zip(self.selection.data, shape))
        else:
            raise ValueError(op)
        return True

    def scale(self, nw: int, nh: int) -> bool:
        log.append(("Image.scale", self.width, self.height, nw, nh, interpolation[-1]))
        for d in [*self.layers, *self.channels, self.selection]:
            d.scaled(nw, nh)
        self.width, self.height = nw, nh
        return True

    # undo
    def undo_group_start(self) -> bool:
        log.append(("undo_group_start",))
        self.undo_depth += 1
        self.undo_groups += 1
        return True

    def undo_group_end(self) -> bool:
        log.append(("undo_group_end",))
        self.undo_depth -= 1
        return True


all_images: list[Image] = []
interpolation: list[str] = ["NONE"]


class Selection:
    @staticmethod
    def bounds(image: Image) -> tuple[bool, bool, int, int, int, int]:
        xs, ys = [], []
        sel = image.selection
        for y in range(image.height):
            for x in range(image.width):
                if sel.pixel(x, y)[0]:
                    xs.append(x)
                    ys.append(y)
        if not xs:
            return (True, False, 0, 0, image.width, image.height)
        return (True, True, min(xs), min(ys), max(xs) + 1, max(ys) + 1)

    @staticmethod
    def save(image: Image) -> Channel:
        ch = Channel(image, "saved selection", image.width, image.height)
        ch.data = bytearray(image.selection.data)
        image.channels.append(ch)
        return ch

    @staticmethod
    def none(image: Image) -> bool:
        image.selection.data = bytearray(image.width * image.height)
        return True

    @staticmethod
    def grow(image: Image, steps: int) -> bool:
        """Square dilation by `steps` pixels (GIMP grows round; close enough for tests)."""
        log.append(("Selection.grow", steps))
        sel = image.selection
        old = bytes(sel.data)
        w, h = image.width, image.height
        for y in range(h):
            for x in range(w):
                best = 0
                for yy in range(max(0, y - steps), min(h, y + steps + 1)):
                    row = old[yy * w + max(0, x - steps): yy * w + min(w, x + steps + 1)]
                    best = max(best, max(row))
                sel.data[y * w + x] = best
        return True

    @staticmethod
    def shrink(image: Image, steps: int) -> bool:
        """Square erosion by `steps` pixels (outside the image counts as unselected)."""
        log.append(("Selection.shrink", steps))
        sel = image.selection
        old = bytes(sel.data)
        w, h = image.width, image.height
        for y in range(h):
            for x in range(w):
                if x < steps or y < steps or x >= w - steps or y >= h - steps:
                    sel.data[y * w + x] = 0
                    continue
                sel.data[y * w + x] = min(min(old[yy * w + x - steps: yy * w + x + steps + 1])
                                          for yy in range(y - steps, y + steps + 1))
        return True

    @staticmethod
    def feather(image: Image, radius: float) -> bool:
        log.append(("Selection.feather", radius))
        return True


def _progress(name: str) -> Any:
    def call(*args: Any) -> Any:
        log.append((name, *args))
        return progress_result["value"]
    return call


def _context(name: str) -> Any:
    def call(*args: Any) -> bool:
        if name == "context_set_interpolation":
            interpolation.append(args[0])
        log.append((name, *args))
        return True
    return call


Gimp = types.ModuleType("gi.repository.Gimp")
Gimp.Image = Image
Gimp.Layer = Layer
Gimp.LayerMask = LayerMask
Gimp.Channel = Channel
Gimp.Path = Path
Gimp.Parasite = Parasite
Gimp.Selection = Selection
# GIMP's per-user folder (the identity token lives in its draggan/ subfolder): a private temp folder
GIMP_DIR = tempfile.mkdtemp(prefix="draggan-fake-gimp-dir-")
atexit.register(shutil.rmtree, GIMP_DIR, True)
Gimp.directory = lambda: GIMP_DIR
Gimp.PARASITE_PERSISTENT = 1
Gimp.PARASITE_UNDOABLE = 2
Gimp.ImageBaseType = types.SimpleNamespace(RGB="RGB", GRAY="GRAY", INDEXED="INDEXED")
Gimp.ImageType = types.SimpleNamespace(RGB_IMAGE="RGB_IMAGE", RGBA_IMAGE="RGBA_IMAGE",
                                       GRAY_IMAGE="GRAY_IMAGE", GRAYA_IMAGE="GRAYA_IMAGE")
Gimp.LayerMode = types.SimpleNamespace(NORMAL="NORMAL")
Gimp.InterpolationType = types.SimpleNamespace(NONE="NONE", LINEAR="LINEAR", CUBIC="CUBIC",
                                               NOHALO="NOHALO", LOHALO="LOHALO")
Gimp.ChannelOps = types.SimpleNamespace(ADD="ADD", SUBTRACT="SUBTRACT", REPLACE="REPLACE",
                                        INTERSECT="INTERSECT")
Gimp.AddMaskType = types.SimpleNamespace(SELECTION="SELECTION", WHITE="WHITE")
Gimp.PDBStatusType = types.SimpleNamespace(SUCCESS="SUCCESS", CALLING_ERROR="CALLING_ERROR",
                                           EXECUTION_ERROR="EXECUTION_ERROR", CANCEL="CANCEL")
for _name in ("progress_init", "progress_update", "progress_set_text", "progress_end"):
    setattr(Gimp, _name, _progress(_name))
for _name in ("context_push", "context_pop", "context_set_interpolation", "context_set_feather",
              "context_set_antialias"):
    setattr(Gimp, _name, _context(_name))


class _ChoiceFake:
    def __init__(self) -> None:
        self.entries: list[tuple[str, int, str, str]] = []

    @classmethod
    def new(cls) -> _ChoiceFake:
        return cls()

    def add(self, nick: str, id: int, label: str, help: str) -> None:
        self.entries.append((nick, id, label, help))


Gimp.Choice = _ChoiceFake

GLib = types.ModuleType("gi.repository.GLib")
GObject = types.ModuleType("gi.repository.GObject")
GObject.ParamFlags = types.SimpleNamespace(READWRITE="READWRITE")


class _GError(Exception):
    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class _Value:
    def __init__(self, gtype: Any, value: Any) -> None:
        self.gtype, self.value = gtype, value


GLib.Error = _GError
GObject.Value = _Value


class ReturnValues(list):
    """What procedure.new_return_values gives: [status, error] then the values."""

    def remove(self, index: int) -> None:  # type: ignore[override]
        del self[index]


class FakeProcedure:
    """A Gimp.ImageProcedure that records what the plug-in declares."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def new_return_values(self, status: str, error: _GError) -> ReturnValues:
        return ReturnValues([status, error])

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith(("add_", "set_")):
            return lambda *a: self.calls.append((attr, a))
        raise AttributeError(attr)


class _ImageProcedureFactory:
    @staticmethod
    def new(plugin: Any, name: str, proc_type: Any, run: Any, data: Any) -> FakeProcedure:
        proc = FakeProcedure(name)
        proc.run_function = run  # type: ignore[attr-defined]
        return proc


class _PlugIn:
    __gtype__ = "GimpPlugIn"


main_calls: list[tuple[Any, Any]] = []
Gimp.PlugIn = _PlugIn
Gimp.ImageProcedure = _ImageProcedureFactory
Gimp.PDBProcType = types.SimpleNamespace(PLUGIN="PLUGIN")
Gimp.ProcedureSensitivityMask = types.SimpleNamespace(DRAWABLE="DRAWABLE")
Gimp.RunMode = types.SimpleNamespace(INTERACTIVE="INTERACTIVE", NONINTERACTIVE="NONINTERACTIVE",
                                     WITH_LAST_VALS="WITH_LAST_VALS")
Gimp.main = lambda gtype, argv: main_calls.append((gtype, argv))
Gimp.displays_flush = lambda: log.append(("displays_flush",))


def reset() -> None:
    log.clear()
    all_images.clear()
    interpolation[:] = ["NONE"]
    progress_result["value"] = True


def install() -> None:
    """Make `import gi` / `from gi.repository import Gimp, Gegl` load this fake."""
    gi = types.ModuleType("gi")
    gi.require_version = lambda name, version: None  # type: ignore[attr-defined]
    repository = types.ModuleType("gi.repository")
    for name, module in (("Gimp", Gimp), ("Gegl", Gegl), ("GLib", GLib), ("GObject", GObject)):
        setattr(repository, name, module)
        sys.modules[f"gi.repository.{name}"] = module
    gi.repository = repository  # type: ignore[attr-defined]
    sys.modules["gi"] = gi
    sys.modules["gi.repository"] = repository


# ------------------------------------------------------------------------------------------
# Helpers for tests


def make_photo(width: int, height: int, name: str = "Photo", offsets: tuple[int, int] = (0, 0),
               image_size: tuple[int, int] | None = None) -> tuple[Image, Layer]:
    """An image with one opaque layer whose pixel (x, y) is (x*3, y*5, x+y) mod 256."""
    iw, ih = image_size or (width + offsets[0], height + offsets[1])
    image = Image(iw, ih)
    layer = Layer(image, name, width, height, "RGB_IMAGE")
    for y in range(height):
        for x in range(width):
            layer.set_pixel(x, y, bytes([(x * 3) % 256, (y * 5) % 256, (x + y) % 256, 255]))
    layer.offsets = offsets
    image.layers.append(layer)
    return image, layer


def add_path(image: Image, strokes: list[list[tuple[float, float]]], name: str = "drag points") -> Path:
    path = Path(image, name)
    for stroke in strokes:
        path.add_stroke(stroke)
    image.insert_path(path, None, 0)
    return path
