"""``POST /events`` and ``POST /items`` for a replica: the real-time path of :mod:`rayrec.realtime`
bound to the live serving bundle (its index takes new items; its user tower refreshes user vectors).

The HTTP layer maps the errors: :class:`InvalidEvent` → 422 (or 404 for an unknown movie) listing
each bad field, :class:`ServiceUnavailable` → 503 (the store is down, or a write was not confirmed in time).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from rayrec.realtime import EventError, Realtime, RealtimeConfig, UnknownMovie
from rayrec.serving.bundle import Bundle
from rayrec.store.base import OnlineStore

__all__ = ["EventSink", "InvalidEvent", "ServiceUnavailable"]

log = logging.getLogger(__name__)


class InvalidEvent(ValueError):
    """A request body the real-time path refused: ``errors`` as ``[{"loc": [...], "msg": ...}]``."""

    def __init__(self, errors: list[dict[str, Any]], status: int = 422) -> None:
        self.errors, self.status = errors, status
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors))


class ServiceUnavailable(RuntimeError):
    """A dependency this request cannot do without (the store, for writes) is down: answer 503."""


class EventSink:
    """One :class:`Realtime` per replica, rebuilt on hot swap (new index, new tower)."""

    def __init__(self, store: OnlineStore, bundle: Bundle) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.rt = self._build(bundle)

    def _build(self, bundle: Bundle) -> Realtime:
        tower = bundle.tower
        cfg = RealtimeConfig(
            user_embedding="tower" if tower is not None else ("mean" if bundle.index is not None else "none"),
        )  # new items: the default blend, which is the genre mean alone without the tower
        spec = bundle.ranker.spec if bundle.ranker is not None else (tower.spec if tower is not None else None)
        return Realtime(self.store, cfg, spec=spec, encoder=tower, index=bundle.index, catalog=bundle.catalog)

    def rebind(self, bundle: Bundle) -> None:
        rt = self._build(bundle)
        try:
            rt.sync_items()  # items added live before the swap go into the new index too
        except Exception as e:  # the store may be down during a swap: items sync on the next add
            log.warning("could not sync live items into the new index: %s", e)
        with self._lock:
            self.rt = rt

    def ingest(self, payload: Any) -> Any:
        """Validate, log and apply one event or a list; returns the ack (or the list of acks)."""
        try:
            acks = self.rt.ingest(payload)
        except UnknownMovie as e:
            raise InvalidEvent(e.errors, status=404) from None
        except EventError as e:
            raise InvalidEvent(e.errors) from None
        return acks if isinstance(payload, list) else acks[0]

    def sync_items(self) -> list[int]:
        return self.rt.sync_items()

    def add_item(self, payload: Any) -> Any:
        try:
            return self.rt.add_item(payload)
        except EventError as e:
            raise InvalidEvent(e.errors) from None
