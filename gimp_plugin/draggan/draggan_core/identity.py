"""The plug-in's identity on a backend: a per-user secret token kept in GIMP's config folder.

Without CURVE keys the backend files a user's photos and drag sessions under this token (hashed),
so "drag again" in a later plug-in run reaches the session, and nobody else can. It is never
written into an image: the session parasite holds only the session id, so an .xcf given to
someone else carries nothing that lets them take over the session.
"""

from __future__ import annotations

import os
from typing import Any

TOKEN_DIR = "draggan"
TOKEN_FILE = "identity.token"


def gimp_config_dir(Gimp: Any = None) -> str:
    """GIMP's per-user folder (Gimp.directory(), e.g. ~/.config/GIMP/3.0), else DragGAN's own."""
    if Gimp is None:
        try:
            from .gimp_ops import Gimp
        except ImportError:  # outside GIMP (tools, tests without the fake)
            Gimp = None
    directory = getattr(Gimp, "directory", None)
    if callable(directory):
        try:
            folder = directory()
            if folder:
                return str(folder)
        except Exception:  # a GIMP too old or broken: fall back to DragGAN's config folder
            pass
    from draggan_wire import client

    return client.config_dir()


def token_path(Gimp: Any = None) -> str:
    return os.path.join(gimp_config_dir(Gimp), TOKEN_DIR, TOKEN_FILE)


def load_token(Gimp: Any = None) -> str:
    """The user's identity token (made on first use, mode 0600). Raises the client's ProtocolError
    (code auth) when the file cannot be used; link.Backend turns that into a PluginError."""
    from draggan_wire import client

    return str(client.load_or_create_token(token_path(Gimp)))
