"""What the server keeps per owner: ``OwnedStore`` (photos, drag sessions) and ``OwnerCache`` (one
owner's salted view of the on-disk latent cache). An owner can never reach, evict or even detect
another's items."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from draggan_wire.protocol import ErrorCode, ProtocolError

log = logging.getLogger("draggan.backend")


class OwnedStore:
    """``id -> (owner, value)`` with a per-owner count limit, a total cap and a retention time;
    thread-safe.

    A lookup with the wrong owner behaves exactly like a missing id (no oracle for other clients).

    Room is made fairly, so that nobody is locked out by identities that cost nothing to make:

    * an owner at its own limit gives up its own least recently used item;
    * at the total cap, the owner that holds the most items gives up its least recently used one,
      but never its most recent one (the session its user is working on); among owners holding
      equally many, the one that came to this store last gives way first;
    * when every owner holds a single item, the owner that came last gives it up: a crowd of new
      identities churns through its own items, and an owner that was here before it keeps its one;
    * items in use by the running edit (``pinned``) are never evicted.

    An item evicted to make room leaves a tombstone (``evicted``) so that its owner is told why it
    is gone, and both owners' ``pressure`` rises (the server's queue and peer limit let owners under
    pressure give way first: those that fill a full store are the ones that churn it).
    """

    TOMBSTONES = 4096  # evicted ids remembered (for the "evicted to make room" answer)

    def __init__(self, max_items: int, retention_s: float, max_total: int | None = None,
                 what: str = "items", pressure_window_s: float = 600.0) -> None:
        self.max_items = max(1, max_items)  # per owner
        self.max_total = max(self.max_items, max_total if max_total is not None else 4 * self.max_items)
        self.retention_s = retention_s
        self.what = what
        self.pressure_window_s = pressure_window_s
        # LRU order: the least recently used item first
        self._items: collections.OrderedDict[str, tuple[str, Any, float]] = collections.OrderedDict()
        self._since: dict[str, float] = {}  # owner -> when it came to this store (its items since then)
        self._counts: collections.Counter[str] = collections.Counter()
        self._pinned: collections.Counter[str] = collections.Counter()
        self._tombstones: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self._losses: dict[str, collections.deque[float]] = {}  # owner -> times it lost or took a place
        self.evictions: collections.Counter[str] = collections.Counter()  # "own" / "room" / "expired"
        self._lock = threading.Lock()

    # -- bookkeeping (with the lock held) --------------------------------------------------

    def _drop(self, key: str, reason: str = "") -> None:
        owner, _value, _last = self._items.pop(key)
        self._counts[owner] -= 1
        if self._counts[owner] <= 0:
            del self._counts[owner]
            self._since.pop(owner, None)
        if reason:
            self.evictions[reason] += 1
            self._tombstones[key] = (owner, reason)
            while len(self._tombstones) > self.TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _expire(self, now: float) -> None:
        for key, (_owner, _value, last) in list(self._items.items()):
            if now - last > self.retention_s and not self._pinned[key]:
                self._drop(key, "expired")

    def _owned(self, owner: str) -> list[str]:
        return [k for k, (o, _v, _t) in self._items.items() if o == owner]  # least recently used first

    def _victim(self, newcomer: str) -> str | None:
        """The item to evict so that ``newcomer`` can add one at the total cap (None: all pinned)."""
        newest: dict[str, str] = {}  # owner -> its most recently used item (protected)
        lru: dict[str, str] = {}  # owner -> its least recently used item that may go
        for key, (owner, _v, _t) in self._items.items():
            newest[owner] = key
        for key, (owner, _v, _t) in self._items.items():
            if owner in lru or self._pinned[key]:
                continue
            if owner != newcomer and key == newest[owner]:
                continue  # each other owner keeps its most recent item while it holds more
            lru[owner] = key
        if lru:  # the owner holding the most gives way first; among equals, the latest to come
            owner = max(lru, key=lambda o: (self._counts[o] + (1 if o == newcomer else 0), self._since.get(o, 0.0)))
            return lru[owner]
        singles = [o for o, key in newest.items() if not self._pinned[key]]
        if not singles:
            return None
        return newest[max(singles, key=lambda o: self._since.get(o, 0.0))]

    def _press(self, owner: str, now: float) -> None:
        times = self._losses.get(owner)
        if times is None:
            if len(self._losses) >= 4 * self.TOMBSTONES:  # bounded: forget the stalest owner
                self._losses.pop(next(iter(self._losses)))
            times = self._losses[owner] = collections.deque(maxlen=64)
        times.append(now)

    # -- API --------------------------------------------------------------------------------

    def has_room(self, owner: str) -> bool:
        """Whether ``put`` for ``owner`` would succeed now (false only when everything is pinned)."""
        with self._lock:
            self._expire(time.monotonic())
            if len(self._items) < self.max_total or self._counts[owner]:
                return True
            return self._victim(owner) is not None

    def put(self, owner: str, value: Any, key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            existing = self._items.get(key)
            if existing is not None and existing[0] != owner:  # ids are random or owner-salted hashes
                raise ProtocolError(ErrorCode.INTERNAL, f"{self.what}: id collision")
            if existing is None:
                for old in self._owned(owner):  # the owner's own least recently used first
                    if self._counts[owner] < self.max_items:
                        break
                    if not self._pinned[old]:
                        self._drop(old, "own")
                while len(self._items) >= self.max_total:
                    victim = self._victim(owner)
                    if victim is None:
                        raise ProtocolError(ErrorCode.BUSY, f"the DragGAN backend holds the most {self.what} it "
                                                            f"keeps for all clients together ({self.max_total}) and "
                                                            "all are in use; try again in a moment")
                    loser = self._items[victim][0]
                    self._drop(victim, "own" if loser == owner else "room")
                    if loser != owner:  # both sides of a push count as pressure (see pressure())
                        self._press(loser, now)
                        self._press(owner, now)
                self._counts[owner] += 1
                self._since.setdefault(owner, now)
            self._tombstones.pop(key, None)
            self._items[key] = (owner, value, now)
            self._items.move_to_end(key)
        return key

    def count(self, owner: str) -> int:
        with self._lock:
            return self._counts[owner]

    def get(self, owner: str, key: str) -> Any | None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            item = self._items.get(key)
            if item is None or item[0] != owner:
                return None
            self._items[key] = (owner, item[1], now)
            self._items.move_to_end(key)
            return item[1]

    def contains(self, owner: str, key: str) -> bool:
        with self._lock:
            self._expire(time.monotonic())
            item = self._items.get(key)
            return item is not None and item[0] == owner

    def evicted(self, owner: str, key: str) -> str:
        """Why ``owner``'s ``key`` is gone: "room" (evicted to make room for another client), "own"
        (the owner's own limit), "expired"; "" when unknown (or another owner's: no oracle)."""
        with self._lock:
            tomb = self._tombstones.get(key)
            return tomb[1] if tomb is not None and tomb[0] == owner else ""

    def pressure(self, owner: str) -> int:
        """How often, within the pressure window, ``owner`` lost an item to make room for another
        owner or made another owner lose one: high for the owners that hold and churn the most."""
        with self._lock:
            times = self._losses.get(owner)
            if not times:
                return 0
            horizon = time.monotonic() - self.pressure_window_s
            while times and times[0] < horizon:
                times.popleft()
            return len(times)

    @contextlib.contextmanager
    def pinned(self, key: str | None) -> Iterator[None]:
        """Keep ``key`` from eviction and expiry while the block runs (the running edit's item)."""
        if not key:
            yield
            return
        with self._lock:
            self._pinned[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pinned[key] -= 1
                if self._pinned[key] <= 0:
                    del self._pinned[key]

    def purge(self, owner: str) -> int:
        with self._lock:
            keys = self._owned(owner)
            for k in keys:
                self._drop(k)
            return len(keys)

    def drop_where(self, predicate: Callable[[Any], bool]) -> int:
        with self._lock:
            keys = [k for k, (_o, v, _t) in self._items.items() if predicate(v)]
            for k in keys:
                self._drop(k)
            return len(keys)

    def figures(self) -> tuple[int, int, int]:
        """(items held, the total cap, owners holding items)."""
        with self._lock:
            self._expire(time.monotonic())
            return len(self._items), self.max_total, len(self._counts)

    def owners(self) -> set[str]:
        with self._lock:
            return set(self._counts)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class OwnerCache:
    """One owner's view of the shared on-disk LatentCache: every key is salted with the owner, so
    the same photo from another client is a miss (no ``from_cache`` oracle, no timing oracle)."""

    def __init__(self, cache: Any, owner: str) -> None:
        self._cache = cache
        self._salt = hashlib.sha256(b"draggan-latent-owner\0" + owner.encode()).digest()

    def _key(self, key: str) -> str:
        return hashlib.sha256(self._salt + key.encode()).hexdigest()

    def get(self, key: str) -> Any:
        return self._cache.get(self._key(key))

    def put(self, key: str, entry: Any) -> Any:
        return self._cache.put(self._key(key), entry)

    def path_for(self, key: str) -> Path:
        return Path(self._cache.path_for(self._key(key)))

    def __getattr__(self, name: str) -> Any:  # directory, max_bytes, ...
        return getattr(self._cache, name)
