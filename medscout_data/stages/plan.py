"""The subject partition: which subjects feed the bench and which the train side.

Decided once per modality, from the catalogue's subjects and the recipe seed,
before any item is built, and saved to `plan/<modality>.json`. `index` keeps
neighbours on one side, `build` draws every item and anomaly reference from
one side, and `split` materialises the sides; all three read this file, so
they cannot disagree.

Subjects are ordered by sha256(seed, modality, subject) and the first
round(n x bench_fraction) go to the bench: reproducible, independent of input
order, and a different seed gives a different partition.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from medscout_data.errors import StageError
from medscout_data.recipe import Recipe, recipe_from_dict
from medscout_data.seeding import stable_rank
from medscout_data.shards import write_json_atomic

BENCH = "bench"
TRAIN = "train"


class PlanError(StageError):
    """A plan that cannot be made or does not fit the run; the message says what to do."""


@dataclass(frozen=True)
class SubjectPlan:
    """One modality's subject partition."""

    modality: str
    seed: int
    recipe: str
    bench_fraction: float
    bench: frozenset[str]
    train: frozenset[str]
    settings: dict = field(default_factory=dict, compare=False, hash=False)  # the recipe, as built

    def recipe_settings(self) -> Recipe:
        """The recipe the pool was built with, as stored in the plan."""
        return recipe_from_dict(self.settings, f"plan/{self.modality}.json")

    def side(self, subject_id: str) -> str:
        if subject_id in self.bench:
            return BENCH
        if subject_id in self.train:
            return TRAIN
        raise PlanError(
            f"subject {subject_id!r} ({self.modality}) is not in the subject plan; "
            "the catalogue changed after the plan was made: remove "
            f"plan/{self.modality}.json and rebuild to make a new one"
        )

    def subjects(self, side: str) -> list[str]:
        return sorted(self.bench if side == BENCH else self.train)

    @property
    def digest(self) -> str:
        """Hash of both subject lists: equal partitions, equal digests."""
        text = json.dumps({"bench": self.subjects(BENCH), "train": self.subjects(TRAIN)})
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "seed": self.seed,
            "recipe": self.recipe,
            "bench_fraction": self.bench_fraction,
            "subjects_sha256": self.digest,
            "bench": self.subjects(BENCH),
            "train": self.subjects(TRAIN),
            "recipe_settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SubjectPlan:
        return cls(
            modality=data["modality"],
            seed=int(data["seed"]),
            recipe=data["recipe"],
            bench_fraction=float(data["bench_fraction"]),
            bench=frozenset(data["bench"]),
            train=frozenset(data["train"]),
            settings=data.get("recipe_settings", {}),
        )


def make_plan(
    subjects: list[str],
    modality: str,
    seed: int,
    bench_fraction: float,
    recipe: str,
    settings: dict | None = None,
) -> SubjectPlan:
    """Partition `subjects`: at least one on each side, about `bench_fraction` on the bench."""
    unique = sorted(set(subjects))
    if len(unique) < 2:
        raise PlanError(
            f"{modality}: {len(unique)} subject(s) found; a subject-disjoint split needs at least 2"
        )
    ordered = sorted(unique, key=lambda s: stable_rank(seed, "subject-plan", modality, s))
    n_bench = min(max(1, round(len(unique) * bench_fraction)), len(unique) - 1)
    return SubjectPlan(
        modality=modality,
        seed=seed,
        recipe=recipe,
        bench_fraction=bench_fraction,
        bench=frozenset(ordered[:n_bench]),
        train=frozenset(ordered[n_bench:]),
        settings=settings or {},
    )


def load_plan(path: Path) -> SubjectPlan:
    return SubjectPlan.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def ensure_plan(path: Path, subjects: list[str], modality: str, recipe: Recipe) -> SubjectPlan:
    """Load the saved plan, checking it fits; make and save one if there is none."""
    path = Path(path)
    if not path.exists():
        plan = make_plan(
            subjects, modality, recipe.seed, recipe.pool.bench_fraction, recipe.name, recipe.to_dict()
        )
        write_json_atomic(plan.to_dict(), path)
        return plan
    plan = load_plan(path)
    if plan.seed != recipe.seed:
        raise PlanError(
            f"{path}: the {modality} pool's subject plan was made with seed {plan.seed}, "
            f"this run asks for seed {recipe.seed}; use --seed {plan.seed}, or remove "
            f"{path} and the {modality} pool and rebuild with the new seed"
        )
    unknown = sorted(set(subjects) - plan.bench - plan.train)
    if unknown:
        raise PlanError(
            f"{path}: {len(unknown)} subject(s) of the catalogue are not in the plan "
            f"(first: {unknown[0]!r}); remove {path} and the {modality} pool to rebuild"
        )
    return plan
