"""The interactive dialog (GimpUi.ProcedureDialog): the procedure's arguments plus a line listing
the backend's models. GIMP remembers the values between runs."""

from __future__ import annotations

from typing import Any

from . import errors, options


def models_text(address: str, timeout_s: float) -> str:
    """One line about the models at `address` (a short handshake), or why it failed."""
    try:
        from . import link

        with link.Backend(address, timeout_s, connect_timeout_s=min(2.0, timeout_s), retries=1) as backend:
            models = backend.models()
    except errors.PluginError as exc:
        return f"Backend not reachable now ({exc.message[:160]}...)"
    listed = ", ".join(f"{m.name} ({m.width}x{m.height}{'' if m.loaded else ', not loaded yet'})"
                       for m in models)
    return f"Models at {address}: {listed}"


def show(procedure: Any, config: Any) -> bool:
    """Show the dialog; True when the user pressed OK."""
    import gi

    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init("draggan")
    address = config.get_property("backend-address") or options.DEFAULT_ADDRESS
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "DragGAN")
    dialog.get_label("models-info", models_text(address, 2.0), False, False)
    names = [arg.name for arg in options.ARGUMENTS]
    names.insert(names.index("model") + 1, "models-info")
    dialog.fill(names)
    ok = bool(dialog.run())
    dialog.destroy()
    return ok
