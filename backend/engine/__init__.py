"""DragGAN drag engine: motion supervision + point tracking over a StyleGAN2 latent (no ZeroMQ here).

Public API (CONTRACTS.md "Drag engine")::

    from backend.engine import DragParams, DragSession, DragStep, EditCancelled
    session = DragSession(G, ws, handle_points=[(x, y)], target_points=[(x, y)], mask=None,
                          params=DragParams(mode="fast"))
    for step in session.run(should_cancel=lambda: False):
        ...
    session.image(), session.ws, session.points, session.set_points(handles, targets, mask)
"""

from .session import DragParams, DragSession, DragStep, EditCancelled

__all__ = ["DragParams", "DragSession", "DragStep", "EditCancelled"]
