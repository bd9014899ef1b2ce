"""The serving forward passes in numpy: the ranker's scores and the user tower's vector, computed from
the trained modules' weights, equal to their torch forward in eval mode up to float rounding.

A request scores about a hundred candidates for one user and asks the user tower for one vector.
At that size torch's eager mode costs its fixed cost per operator call, not arithmetic: the ranker's
forward over 110 candidates took 0.5-0.8 ms and the user tower's 0.45 ms on one core, where numpy's
calls cost a few microseconds each. Two things make the ranker cheaper still:

- the user's side is computed once per user, not once per candidate: its embeddings, and its part of
  the first layer (the first layer's product splits by input blocks: user blocks, item blocks, and
  the pair's crosses);
- the item's part of the first layer is a product of the item's own inputs, computed for the
  candidates in one product (the candidates' rows are gathered from the tables once).

The layout follows :class:`rayrec.models.ranker.Ranker` and :class:`rayrec.models.two_tower.TwoTower`
exactly; a module these do not know (an MLP layer other than Linear, ReLU or dropout) makes
:func:`ranker_forward` / :func:`user_tower_forward` return None, and the caller keeps torch.
``tests/unit/test_forward.py`` checks both against torch on random weights and inputs, for every
ranker objective, with and without the EASE input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from rayrec.models.layers import BitDropout
from rayrec.models.ranker import Ranker
from rayrec.models.two_tower import TwoTower

__all__ = ["RankerForward", "UserTowerForward", "ranker_forward", "user_tower_forward", "owners"]

Layers = list[tuple[np.ndarray, np.ndarray] | None]  # (W.T, b) per Linear, None per ReLU


def _weights(table: nn.Embedding) -> np.ndarray:
    return table.weight.detach().cpu().numpy().astype(np.float32, copy=False)


def _layers(seq: nn.Sequential) -> Layers | None:
    """The MLP as (W.T, b) per Linear and None per ReLU; dropout (identity in eval) left out; None
    for any other module."""
    out: Layers = []
    for m in seq:
        if type(m) is nn.Linear:  # exactly these classes: a subclass may compute otherwise
            w = m.weight.detach().cpu().numpy().astype(np.float32)
            b = m.bias.detach().cpu().numpy().astype(np.float32) if m.bias is not None else np.zeros(len(w), np.float32)
            out.append((np.ascontiguousarray(w.T), b))
        elif type(m) is nn.ReLU:
            out.append(None)
        elif type(m) in (BitDropout, nn.Dropout):
            continue
        else:
            return None
    return out


def _run(layers: Layers, x: np.ndarray) -> np.ndarray:
    for layer in layers:
        if layer is None:
            np.maximum(x, 0.0, out=x)
        else:
            x = x @ layer[0]
            x += layer[1]
    return x


def _masked_mean(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """:func:`rayrec.models.layers.masked_mean`: the mean of each row's non-padding embeddings."""
    ids = np.asarray(ids)
    mask = (ids > 0).astype(np.float32)  # (B, L)
    summed = np.einsum("bl,bld->bd", mask, table[ids])
    return summed / np.maximum(mask.sum(1, keepdims=True), 1.0)


def _sigmoid_log(x: np.ndarray) -> np.ndarray:
    """log σ(x), stable for large |x| (``torch.nn.functional.logsigmoid``)."""
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


class RankerForward:
    """:meth:`Ranker.predict` of an eval-mode ranker in numpy, for candidates of a few users:
    ``score(users, owner, items)`` where ``users`` holds each user's inputs once (U rows), ``owner``
    the user row of each candidate (N,), ``items`` the candidates' inputs (N rows, with ``ease_score``
    when the ranker takes it)."""

    def __init__(self, model: Ranker, layers: Layers) -> None:
        cfg = model.config
        self.objective, self.like_weight, self.ease = cfg.objective, float(cfg.like_weight), bool(cfg.ease_feature)
        self.user, self.item, self.genre = _weights(model.user), _weights(model.item), _weights(model.genre)
        self.user_count, self.item_count, self.item_year = _weights(model.user_count), _weights(model.item_count), _weights(model.item_year)
        d, b = cfg.embedding_dim, cfg.bucket_dim
        ud, idn = model.sizes["user_dense"], model.sizes["item_dense"]
        first, rest = layers[0], layers[1:]
        assert first is not None
        w1, self.b1 = first  # (n_in, h): rows in Ranker.forward's concatenation order
        widths = [("user", d), ("item", d), ("recent", d), ("user_genres", d), ("item_genres", d), ("user_x_item", d),
                  ("user_count", b), ("item_count", b), ("item_year", b), ("user_dense", ud), ("item_dense", idn),
                  ("cross", 3 + int(self.ease))]  # fmt: skip
        if sum(w for _, w in widths) != len(w1):
            raise ValueError(f"the ranker's first layer takes {len(w1)} inputs, its layout {sum(w for _, w in widths)}")
        at, blocks = 0, {}
        for name, w in widths:
            blocks[name] = np.ascontiguousarray(w1[at : at + w])
            at += w
        self.w_user = np.concatenate([blocks[k] for k in ("user", "recent", "user_genres", "user_count", "user_dense")])
        self.w_item = np.concatenate([blocks[k] for k in ("item", "item_genres", "item_count", "item_year", "item_dense")])
        self.w_pair, self.w_cross = blocks["user_x_item"], blocks["cross"]
        self.rest = rest

    def users(self, users: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """The user side, once per user: ``(user id embedding, recent mean, genre mean, first-layer part)``."""
        user = self.user[np.asarray(users["user_id"]).reshape(-1)]
        recent = _masked_mean(self.item, users["user_recent_items"])
        genres = _masked_mean(self.genre, users["user_genres"])
        count = self.user_count[np.asarray(users["user_count_bucket"]).reshape(-1)]
        dense = np.asarray(users["user_dense"], dtype=np.float32).reshape(len(user), -1)
        part = np.concatenate([user, recent, genres, count, dense], axis=1) @ self.w_user
        return user, recent, genres, part

    def score(self, users: Mapping[str, np.ndarray], owner: np.ndarray, items: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) ranking scores in [0, 1] (float32), as ``Ranker.predict`` on the paired rows."""
        user, recent, genres, part = self.users(users)
        item = self.item[np.asarray(items["item_id"])]
        item_genres = _masked_mean(self.genre, items["item_genres"])
        x_item = np.concatenate(
            [item, item_genres, self.item_count[np.asarray(items["item_count_bucket"])],
             self.item_year[np.asarray(items["item_year_bucket"])], np.asarray(items["item_dense"], dtype=np.float32)],
            axis=1,
        )  # fmt: skip
        u = user[owner]
        ug_ids, ig_ids = np.asarray(users["user_genres"])[owner], np.asarray(items["item_genres"])
        overlap = ((ug_ids[:, :, None] == ig_ids[:, None, :]) & (ig_ids[:, None, :] > 0)).any(1).sum(1)
        cross = [(recent[owner] * item).sum(1), (genres[owner] * item_genres).sum(1), overlap.astype(np.float32) / 3.0]
        if self.ease:
            if "ease_score" not in items:
                raise ValueError("this ranker takes an 'ease_score' input")
            cross.append(np.asarray(items["ease_score"], dtype=np.float32))
        h = x_item @ self.w_item
        h += part[owner]
        h += (u * item) @ self.w_pair
        h += np.stack(cross, axis=1).astype(np.float32, copy=False) @ self.w_cross
        h += self.b1
        logits = _run(self.rest, h)
        if self.objective == "like":
            out = np.exp(_sigmoid_log(logits[:, 0]))  # σ, without overflow for very negative logits
        else:
            out = np.exp(_sigmoid_log(logits[:, 0]) + self.like_weight * _sigmoid_log(logits[:, 1]))
        return out.astype(np.float32, copy=False)


class UserTowerForward:
    """:meth:`TwoTower.user` of an eval-mode retriever in numpy: (B, D) unit vectors."""

    def __init__(self, model: TwoTower, layers: Layers) -> None:
        self.items, self.users = _weights(model.item_ids), _weights(model.user_ids)
        self.genres, self.user_count = _weights(model.genres), _weights(model.user_count)
        self.layers = layers

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        recent_ids = batch["user_recent_items"]
        history = _masked_mean(self.items, batch.get("history_items", recent_ids))
        recent = _masked_mean(self.items, recent_ids)
        side = np.concatenate(
            [_masked_mean(self.genres, batch["user_genres"]), self.user_count[np.asarray(batch["user_count_bucket"])],
             np.asarray(batch["user_dense"], dtype=np.float32)],
            axis=1,
        )  # fmt: skip
        x = history + recent + self.users[np.asarray(batch["user_id"])] + _run(self.layers, side)
        norm = np.maximum(np.sqrt((x * x).sum(1, keepdims=True)), 1e-12)  # torch.nn.functional.normalize
        return (x / norm).astype(np.float32, copy=False)


def ranker_forward(model: nn.Module) -> RankerForward | None:
    """The numpy forward of an eval-mode :class:`Ranker` (exactly that class), or None where it does not
    apply (it computes the eval-mode forward: a module in training mode keeps torch)."""
    if type(model) is not Ranker or model.training:
        return None
    layers = _layers(model.over)
    if not layers or layers[0] is None or layers[-1] is None:
        return None
    return RankerForward(model, layers)


def user_tower_forward(model: nn.Module) -> UserTowerForward | None:
    """The numpy user tower of an eval-mode :class:`TwoTower` (exactly that class), or None where it does
    not apply."""
    if type(model) is not TwoTower or model.training:
        return None
    layers = _layers(model.user_arch)
    return UserTowerForward(model, layers) if layers else None


def owners(sizes: Sequence[int]) -> np.ndarray:
    """The user row of each candidate, for requests with ``sizes`` candidates each."""
    return np.repeat(np.arange(len(sizes)), sizes)
