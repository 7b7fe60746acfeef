"""What the server tells about itself: ``welcome`` (the answer to ``hello``) and the figures of how
full it is (``draggan-backend status``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from draggan_wire import protocol

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("draggan.backend")

SERVER_VERSION = "0.1.0"


def welcome(server: Server) -> protocol.Welcome:
    """The answer to ``hello``: versions, device, models, memory, limits and :func:`figures`."""
    total, used = server.runner.memory()
    welcome = protocol.Welcome(server=SERVER_VERSION, protocol=protocol.PROTOCOL_VERSION,
                               device=server.runner.device, models=server.runner.models(),
                               memory_total=total, memory_used=used, heartbeat_s=server.config.heartbeat_s,
                               instance=server.instance, auth=server.config.auth, cache=server.config.cache,
                               queue_limit=server.config.queue_limit,
                               running=1 if server.current is not None else 0, waiting=len(server.queue))
    welcome.limits["max_peers"] = server.config.max_peers
    welcome.stores = figures(server)
    return welcome


def figures(server: Server) -> dict[str, int]:
    """How full the server is: the runner's stores (photos, sessions, owners holding them), the
    queue and the connections (for ``welcome`` and ``draggan-backend status``)."""
    out: dict[str, int] = {}
    runner_stores = getattr(server.runner, "stores", None)
    if callable(runner_stores):
        try:
            out.update({str(k): int(v) for k, v in runner_stores().items()})
        except Exception:  # noqa: BLE001 - figures for a status line must never break hello
            log.exception("the runner's store figures failed")
    live = server.guard.live()
    out.update({
        "queue": len(server.queue), "queue_max": server.config.queue_limit,
        "running": 1 if server.current is not None else 0,
        "peers": len(live), "peers_max": server.config.max_peers,
        "connected_owners": len({peer.owner for peer in live if peer.owner}),
        "known_owners": len(server.owners),
        "bumped": server.stats["bumped"], "shed": server.stats["shed:peers"],
    })
    return out
