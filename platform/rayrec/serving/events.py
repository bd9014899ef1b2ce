"""``POST /events`` and ``POST /items`` for a replica: the real-time path of :mod:`rayrec.realtime`
bound to the live serving bundle (its index takes new items; its user tower refreshes user vectors).

The HTTP layer maps the errors: :class:`InvalidEvent` → 422 (or 404 for an unknown movie) listing
each bad field, :class:`ServiceUnavailable` → 503 (the store is down, or a write was not confirmed in time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from rayrec.realtime import EventError, Realtime, RealtimeConfig, UnknownMovie
from rayrec.serving.bundle import Bundle
from rayrec.serving.guard import StoreDown, StoreGuard, WriteUnconfirmed
from rayrec.store.base import OnlineStore

__all__ = ["EventSink", "InvalidEvent", "ServiceUnavailable", "guarded_write", "item_space"]

log = logging.getLogger(__name__)


class InvalidEvent(ValueError):
    """A request body the real-time path refused: ``errors`` as ``[{"loc": [...], "msg": ...}]``."""

    def __init__(self, errors: list[dict[str, Any]], status: int = 422) -> None:
        self.errors, self.status = errors, status
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors))


class ServiceUnavailable(RuntimeError):
    """A dependency this request cannot do without (the store, for writes) is down: answer 503."""


async def guarded_write(guard: StoreGuard, fn: Callable[[Any], Any], payload: Any, what: Literal["event", "item"]) -> Any:
    """``fn(payload)`` (an ingest or an item add) through the guard's write path; store failures
    become :class:`ServiceUnavailable` with a message for the caller (no store URL or path: those go
    to the log)."""
    try:
        return await guard.write(fn, payload)
    except StoreDown as e:
        log.warning("POST /%ss: %s", what, e)
        done = "the event was not recorded" if what == "event" else "the item was not added"
        raise ServiceUnavailable(f"the online store is unavailable, {done}; retry") from None
    except WriteUnconfirmed as e:
        log.warning("POST /%ss: %s", what, e)
        advice = ("retry with the same event_id (it is applied once)" if what == "event"
                  else "look for the item before adding it again")  # fmt: skip
        raise ServiceUnavailable(f"{e}: it may still be applied; {advice}") from None


def item_space(bundle: Bundle) -> str:
    """The store's embedding kind for live-added items' vectors in this bundle's index space: the
    retriever version its vectors come from (or the index version, for the PureSVD baseline), so a
    replica on another retriever never reads them into its index."""
    meta = bundle.index.meta if bundle.index is not None else {}
    source = meta.get("embeddings") or {}
    space = meta.get("model_version") or source.get("model_version") or meta.get("version")
    return f"item.{space}" if space else "item"


class EventSink:
    """One :class:`Realtime` per replica, rebuilt on hot swap (new index, new tower)."""

    def __init__(self, store: OnlineStore, bundle: Bundle | None = None, *, realtime: Realtime | None = None) -> None:
        self.store = store
        self._lock = threading.Lock()
        if realtime is None and bundle is None:
            raise ValueError("an EventSink needs a bundle or a Realtime")
        self.rt = realtime if realtime is not None else self._build(bundle)  # type: ignore[arg-type]

    def _build(self, bundle: Bundle) -> Realtime:
        tower = bundle.tower
        # No stored user vector: /recommend computes the user's vector on every request from the inputs
        # an event changes (the user row and the online events), so it is current by construction and
        # a stored copy would be one more write per event that nothing reads. New items: the default
        # blend, which is the genre mean alone without the tower.
        cfg = RealtimeConfig(user_embedding="none", item_kind=item_space(bundle))
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
