"""Pure-Python logic of the DragGAN GIMP plug-in.

Everything here is importable without GIMP except `gimp_ops`, `edit` and `dialog`, which
import `gi.repository.Gimp` (a fake one in tests/plugin). Modules:

- `errors`    PluginError and every user-facing error text.
- `points`    path strokes -> (handle, target) pairs.
- `geometry`  Rect, the crop around points/selection with the model's aspect, model coordinates,
              the layer-mask plan (grow, feather, inset).
- `options`   the procedure's arguments (one table used for PDB registration and the dialog).
- `parasite`  the session record stored on a result layer ("drag again").
- `decision`  continue the backend session or invert anew.
- `texts`     progress texts and result-layer names.
- `link`      the plug-in's view of the backend (wraps draggan_wire.client).
- `gimp_ops`  the GIMP calls: pixels, temporary scaling images, result layer, layer mask.
- `edit`      one edit end to end (what the procedure's run function calls).
- `dialog`    GimpUi.ProcedureDialog glue (interactive runs only).
"""

PLUGIN_VERSION = "0.1.0"
