"""What an experiment is, and who is in it: the ``experiments`` section of the serving config.

An experiment has a name, a salt, a mode (``ab``: each user gets one variant's list; ``interleave``:
each user gets one list drawn from two variants' lists, by team draft or, with ``interleaving:
optimized``, by optimized interleaving: :mod:`rayrec.experiments.interleave`) and variants, each overriding
serving settings (model versions, recall quotas, rerank weights, ``rank_weight``). Users are assigned
by a stable hash, never stored: the same user lands in the same variant in every replica and after a
restart, and changing the salt reshuffles them.

Experiments split the user space: each claims the share ``users = [start, end)`` of a hash of the user
id that every experiment shares, so two experiments whose ranges overlap would claim the same users
and are refused. Within its range an experiment hashes (salt, user) again to pick the variant, so
the variant split is independent of the range split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Variant", "Experiment", "Assignment", "assign", "unit_hash", "check_disjoint", "LAYER_SALT", "INTERLEAVED"]

LAYER_SALT = "rayrec-experiments"  # the hash that splits users between experiments
INTERLEAVED = "interleaved"  # the variant an interleaving experiment's users are reported under
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"


def unit_hash(salt: str, user_id: int) -> float:
    """A stable number in [0, 1) for (salt, user): the same in every process (no ``hash()``)."""
    digest = hashlib.blake2b(f"{salt}\x00{int(user_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Variant(BaseModel):
    """One arm: a name, its share of the experiment's users (``ab``), and the serving settings it
    changes (any field of the serving config but ``experiments``; ``recall`` and ``rerank`` merge
    field by field, so ``{"rerank": {"diversity": 0.3}}`` keeps the other rerank settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="letters, digits, '_.-'")
    weight: float | None = Field(default=None, gt=0, le=1, description="share of the experiment's users; None: equal shares")
    overrides: dict[str, object] = Field(default_factory=dict, description="serving settings of this arm")

    @field_validator("name")
    @classmethod
    def _reserved(cls, v: str) -> str:
        if v == INTERLEAVED:
            raise ValueError(f"'{INTERLEAVED}' is reserved for interleaved lists")
        return v

    @field_validator("overrides")
    @classmethod
    def _no_nesting(cls, v: dict[str, object]) -> dict[str, object]:
        if "experiments" in v:
            raise ValueError("experiments: a variant cannot declare experiments of its own")
        return v


class Experiment(BaseModel):
    """An A/B test or an interleaving experiment (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="letters, digits, '_.-'; the analysis job asks for it")
    salt: str | None = Field(default=None, max_length=128, description="hash salt of the variant split; None: the name")
    mode: Literal["ab", "interleave"] = "ab"
    interleaving: Literal["team_draft", "optimized"] = Field(
        default="team_draft", description="how an interleave experiment merges the lists and credits clicks"
    )
    variants: list[Variant] = Field(min_length=2, max_length=8)
    users: tuple[float, float] = Field(default=(0.0, 1.0), description="[start, end) of the user space it claims")
    enabled: bool = Field(default=True, description="False: nobody is assigned (the range stays claimed)")

    @field_validator("users")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
            raise ValueError(f"must be [start, end) with 0 <= start < end <= 1, got [{lo}, {hi})")
        return v

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: names must be unique, {', '.join(dup)} repeated")
        if self.mode != "interleave" and self.interleaving != "team_draft":
            raise ValueError(f"interleaving: '{self.interleaving}' needs mode 'interleave', got mode '{self.mode}'")
        if self.mode == "interleave" and len(self.variants) != 2:
            raise ValueError(f"variants: an interleaving experiment has exactly 2 variants, got {len(self.variants)}")
        given = [v.weight for v in self.variants if v.weight is not None]
        if given and len(given) != len(self.variants):
            raise ValueError("variants: give every variant a weight, or none (equal shares)")
        if given and abs(sum(given) - 1.0) > 1e-6:
            raise ValueError(f"variants: weights must sum to 1, got {sum(given):g} ({' + '.join(f'{w:g}' for w in given)})")
        return self

    @property
    def salt_text(self) -> str:
        return self.salt if self.salt is not None else self.name

    @property
    def weights(self) -> list[float]:
        if self.variants[0].weight is None:
            return [1.0 / len(self.variants)] * len(self.variants)
        return [float(v.weight or 0.0) for v in self.variants]

    def variant_of(self, user_id: int) -> Variant:
        """The arm of a user in this experiment (``ab``): by the hash of (salt, user) against the
        cumulative weights."""
        u = unit_hash(self.salt_text, user_id)
        acc = 0.0
        for v, w in zip(self.variants, self.weights):
            acc += w
            if u < acc:
                return v
        return self.variants[-1]


def check_disjoint(experiments: Sequence[Experiment]) -> None:
    """Refuse experiments with the same name, or whose user ranges overlap (they would claim the
    same users), naming both."""
    seen: dict[str, int] = {}
    for i, e in enumerate(experiments):
        if e.name in seen:
            raise ValueError(f"experiments[{i}].name: '{e.name}' is also experiments[{seen[e.name]}]'s name")
        seen[e.name] = i
    for i, a in enumerate(experiments):
        for j in range(i):
            b = experiments[j]
            if a.users[0] < b.users[1] and b.users[0] < a.users[1]:
                raise ValueError(
                    f"experiments[{i}].users: [{a.users[0]:g}, {a.users[1]:g}) of '{a.name}' overlaps "
                    f"[{b.users[0]:g}, {b.users[1]:g}) of experiments[{j}] '{b.name}': two experiments "
                    "cannot claim the same users; give them disjoint ranges"
                )


@dataclass(frozen=True)
class Assignment:
    """Where a request goes: an experiment and its arms (one for ``ab``, two for ``interleave``)."""

    experiment: str
    mode: Literal["ab", "interleave"]
    arms: tuple[str, ...]  # variant names
    interleaving: Literal["team_draft", "optimized"] = "team_draft"

    @property
    def variant(self) -> str:
        """What the answer reports: the variant, or "interleaved"."""
        return self.arms[0] if self.mode == "ab" else INTERLEAVED

    def key(self, arm: str) -> str:
        """The arm's id within the serving config: ``<experiment>/<variant>``."""
        return f"{self.experiment}/{arm}"


def assign(experiments: Sequence[Experiment], user_id: int) -> Assignment | None:
    """The experiment arm(s) of a user, None when no enabled experiment claims them."""
    if not experiments:
        return None
    u = unit_hash(LAYER_SALT, user_id)
    for e in experiments:
        if e.enabled and e.users[0] <= u < e.users[1]:
            if e.mode == "interleave":
                return Assignment(e.name, "interleave", (e.variants[0].name, e.variants[1].name), e.interleaving)
            return Assignment(e.name, "ab", (e.variant_of(user_id).name,))
    return None
