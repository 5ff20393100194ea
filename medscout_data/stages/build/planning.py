"""Planning: every item of a cell decided in the main process, and its replacements when it fails.

An item is planned as a list of *attempts*, tried in order by whichever worker
makes it: an attempt is one image, the item's choice on it (jigsaw
permutation, anomaly cell, or a seeded draw of scale crops) and, for anomaly,
one reference. The first attempt that makes a valid item wins.

Round 0 (`plan_cell`): each side of the subject partition gets its share of
the cell, every subject of a side an even quota, each subject's images spread
along its volume(s), and the balanced choices (scale variant, permutation,
cell) are laid over the images so that one image carries distinct choices.
Every attempt has a key (image, choice, reference); no key is given to two
items, so two items can never come out the same. Each item also reserves a
few untaken attempts on other images of its subject.

Rounds 1.. (`plan_replacements`): the items no attempt could make get new
attempts, keys never tried nor taken: first the same subject's other images,
then the other subjects of the same side, with the item's own choice; only
when the side has no untried attempt for that choice left does the item take
another choice (the one the side has made least of). Rounds depend only on
what earlier rounds made, which is the same for any worker count, so the
pool is byte-identical for any `--workers` and rank split.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medscout_data.errors import StageError
from medscout_data.seeding import derive_seed, rng_for
from medscout_data.stages.build.catalog import CellContext, ImageRef, Reference
from medscout_data.stages.plan import BENCH, TRAIN
from medscout_data.tasks.geometry import non_identity_permutations

FALLBACK_ATTEMPTS = 12  # round 0: attempts an item reserves on other images of its subject
FALLBACK_IMAGES = 6  # ... spread over at most this many images
ROUND_ATTEMPTS = 16  # round r >= 1: new attempts per item, 4x more each round
MAX_ROUNDS = 8
LOOKUP_CHUNK = 64  # images whose references are looked up at once while collecting attempts


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way to make an item: an image, the item's choice on it and (anomaly) one reference."""

    image: ImageRef
    choice: tuple[int, ...] = ()  # jigsaw permutation, (anomaly cell,), or () for scale
    reference: Reference | None = None
    draw: int = 0  # scale: which seeded draw of crops on this image

    def key(self, item_id: str) -> tuple:
        """What two items must never share: scale draws are the item's own, so only they name it."""
        if not self.choice:
            return ("scale", item_id, self.image.image_id, self.draw)
        reference = self.reference.image.image_id if self.reference else ""
        return (self.image.image_id, self.choice, reference)

    def describe(self) -> list:
        reference = self.reference.image.image_id if self.reference else ""
        return [self.image.image_id, list(self.choice), reference, self.draw]


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """Everything a worker needs to make one item."""

    id: str
    modality: str
    task: str
    variant: str
    side: str
    seed: int
    subject_id: str  # the subject the plan gave the item (replacements look there first)
    choice: tuple[int, ...]  # the balanced choice the plan gave it
    attempts: tuple[Attempt, ...]
    round: int = 0

    def digest_text(self) -> str:
        attempts = [a.describe() for a in self.attempts]
        return json.dumps(
            [self.id, self.variant, self.side, self.seed, self.subject_id, self.choice, self.round, attempts]
        )


class BuildError(StageError):
    """A build that cannot start or finish; the message says what to do."""


# ---------------------------------------------------------------- even shares


def quotas(subjects: Sequence[str], total: int, rng: np.random.Generator) -> dict[str, int]:
    """Split `total` items as evenly as possible over `subjects`; the remainder goes to a seeded few."""
    base, extra = divmod(total, len(subjects))
    lucky = set(rng.permutation(len(subjects))[:extra].tolist())
    return {s: base + (i in lucky) for i, s in enumerate(subjects)}


def spread(count: int, n: int, rng: np.random.Generator) -> list[int]:
    """`count` indices into range(n), one drawn in each of `count` equal strata.

    Spreads a subject's items along its volume(s); with more items than
    images, every image is used about equally often.
    """
    edges = np.floor(np.linspace(0, n, count + 1)).astype(int)
    picks = []
    for lo, hi in itertools.pairwise(edges.tolist()):
        picks.append(int(rng.integers(lo, hi)) if hi > lo else min(lo, n - 1))
    return picks


def balanced(options: Sequence[Any], count: int, rng: np.random.Generator) -> list[Any]:
    """`count` draws from `options`, each as often as possible (counts differ by at most 1), shuffled."""
    order = [options[i] for i in rng.permutation(len(options))]
    repeated = (order * (count // len(order) + 1))[:count]
    return [repeated[i] for i in rng.permutation(count)]


def side_counts(
    total: int, items_per_cell: int, bench_per_cell: int, bench_fraction: float
) -> dict[str, int]:
    """Items per side of one cell: the bench gets its exact share."""
    bench = bench_per_cell if total >= items_per_cell else max(1, round(total * bench_fraction))
    return {BENCH: bench, TRAIN: total - bench}


def task_options(task: str, context: CellContext) -> list[tuple[int, ...]]:
    """The balanced choices of a task: () for scale, permutations for jigsaw, (cell,) for anomaly."""
    if task == "scale":
        return [()]
    if task == "jigsaw":
        return non_identity_permutations(context.recipe.jigsaw.grid**2)
    return [(c,) for c in context.recipe.anomaly.cells]


def spread_choices(images: Sequence[str], options: Sequence[Any], rng: np.random.Generator) -> list[Any]:
    """One option per item, counts balanced over `options` (within 1), each image's items on distinct options.

    Images with most items choose first (seeded order among equals); each of
    their items takes, of the options this image has used least, one with
    the most room left, drawn at random. This spreads an image's items over
    distinct options whenever the balanced counts allow it.
    """
    room = Counter(balanced(range(len(options)), len(images), rng))
    by_image: dict[str, list[int]] = defaultdict(list)
    for item, image in enumerate(images):
        by_image[image].append(item)
    shuffled = list(by_image)
    shuffled = [shuffled[i] for i in rng.permutation(len(shuffled))]
    order = sorted(shuffled, key=lambda img: -len(by_image[img]))
    chosen = [0] * len(images)
    for image in order:
        used: Counter[int] = Counter()
        for item in by_image[image]:
            open_options = [o for o in range(len(options)) if room[o] > 0]
            best = min((used[o], -room[o]) for o in open_options)
            ties = [o for o in open_options if (used[o], -room[o]) == best]
            chosen[item] = ties[int(rng.integers(len(ties)))]
            used[chosen[item]] += 1
            room[chosen[item]] -= 1
    return [options[c] for c in chosen]


# ---------------------------------------------------------------- round 0


@dataclass
class Planner:
    """Plans one cell's rounds: which attempt keys are taken, and each image's references."""

    context: CellContext
    task: str
    taken: set[tuple] = field(default_factory=set)
    tried: set[tuple] = field(default_factory=set)
    _references: dict[str, tuple[Reference, ...]] = field(default_factory=dict)

    @property
    def recipe(self):
        return self.context.recipe

    # -- references

    def references(self, images: Iterable[ImageRef]) -> None:
        """Look up (once) the anomaly references of `images`: nearby slices, or X-ray neighbours."""
        if self.task != "anomaly":
            return
        wanted = list({i.image_id: i for i in images if i.image_id not in self._references}.values())
        if not wanted:
            return
        if self.context.modality == "xray":
            self._references.update(_neighbour_references(self.context, wanted))
            return
        limit = self.recipe.anomaly.max_references
        for image in wanted:
            near = self.context.nearby_slices(image)
            order = rng_for(self.recipe.seed, "references", image.image_id).permutation(len(near))
            self._references[image.image_id] = tuple(Reference(near[i]) for i in order[:limit])

    def references_of(self, image: ImageRef) -> tuple[Reference, ...]:
        return self._references.get(image.image_id, ())

    # -- attempts

    def attempts_on(self, item_id: str, image: ImageRef, choice: tuple, draw: int = 0) -> list[Attempt]:
        """Every untaken, untried attempt of `choice` on `image` (anomaly: one per free reference)."""
        if self.task == "anomaly":
            candidates = [Attempt(image, choice, reference) for reference in self.references_of(image)]
        else:
            candidates = [Attempt(image, choice, None, draw)]
        return [
            a for a in candidates if a.key(item_id) not in self.taken and a.key(item_id) not in self.tried
        ]

    def take(self, item_id: str, attempts: Iterable[Attempt]) -> tuple[Attempt, ...]:
        attempts = tuple(attempts)
        self.taken.update(a.key(item_id) for a in attempts)
        return attempts


def plan_cell(planner: Planner, total: int) -> list[ItemSpec]:
    """Round 0 of one modality x task cell, bench side first."""
    context, recipe = planner.context, planner.recipe
    counts = side_counts(
        total, recipe.pool.items_per_cell, recipe.pool.bench_per_cell, recipe.pool.bench_fraction
    )
    specs: list[ItemSpec] = []
    for side in (BENCH, TRAIN):
        subjects = context.subjects(side)
        if counts[side] and not subjects:
            raise BuildError(f"{context.modality}: no usable images for any {side}-side subject")
        specs.extend(_plan_side(planner, side, subjects, counts[side], start=len(specs)))
    return specs


def _plan_side(planner: Planner, side: str, subjects: list[str], count: int, start: int) -> list[ItemSpec]:
    context, recipe, task = planner.context, planner.recipe, planner.task
    modality = context.modality
    rng = rng_for(recipe.seed, "plan", modality, task, side)
    picks: list[ImageRef] = []
    for subject, quota in quotas(subjects, count, rng).items():
        images = context.images_by_subject[subject]
        picks.extend(images[i] for i in spread(quota, len(images), rng))
    picks = _within_capacity(picks, context, task, subjects, rng)
    variants = balanced(["tier", "box"], count, rng) if task == "scale" else [""] * count
    choices = spread_choices([p.image_id for p in picks], task_options(task, context), rng)
    fallbacks = [_fallback_images(context, image, rng) for image in picks]
    planner.references(itertools.chain(picks, *fallbacks))
    ids = [f"{modality}-{task}-{start + n:06d}" for n in range(count)]
    primaries = _primary_attempts(planner, ids, picks, choices)
    specs = []
    for n, (item_id, variant, choice) in enumerate(zip(ids, variants, choices, strict=True)):
        reserved = _reserve(planner, item_id, fallbacks[n], choice)
        specs.append(
            ItemSpec(
                id=item_id,
                modality=modality,
                task=task,
                variant=variant,
                side=side,
                seed=derive_seed(recipe.seed, "item", modality, task, start + n),
                subject_id=picks[n].subject_id,
                choice=choice,
                attempts=primaries[n] + reserved,
            )
        )
    return specs


def image_capacity(task: str, context: CellContext) -> int | None:
    """How many distinct items one image can carry in a cell (None: any number)."""
    if task == "jigsaw":
        return len(task_options(task, context))
    if task == "anomaly":
        return len(context.recipe.anomaly.cells) * context.recipe.anomaly.max_references
    return None


def _within_capacity(
    picks: list[ImageRef], context: CellContext, task: str, subjects: list[str], rng: np.random.Generator
) -> list[ImageRef]:
    """Picks with no image used more often than it has distinct choices: the excess moves to the
    subject's least-used images, then to other subjects of the side with room."""
    capacity = image_capacity(task, context)
    if capacity is None:
        return picks
    use = Counter(p.image_id for p in picks)
    if max(use.values(), default=0) <= capacity:
        return picks
    out, excess = [], []
    for pick in picks:
        if use[pick.image_id] > capacity:
            use[pick.image_id] -= 1
            excess.append(pick)
        else:
            out.append(pick)
    use = Counter(p.image_id for p in out)
    for pick in excess:
        home = context.images_by_subject[pick.subject_id]
        others = [img for s in subjects if s != pick.subject_id for img in context.images_by_subject[s]]
        room = [img for img in home if use[img.image_id] < capacity] or [
            img for img in others if use[img.image_id] < capacity
        ]
        if not room:
            out.append(pick)  # the side is full: this item will fail and be reported short
            continue
        least = min(use[img.image_id] for img in room)
        options = [img for img in room if use[img.image_id] == least]
        chosen = options[int(rng.integers(len(options)))]
        use[chosen.image_id] += 1
        out.append(chosen)
    return out


def _fallback_images(context: CellContext, image: ImageRef, rng: np.random.Generator) -> list[ImageRef]:
    images = context.images_by_subject[image.subject_id]
    order = [images[i] for i in rng.permutation(len(images))]
    return [other for other in order if other.image_id != image.image_id][:FALLBACK_IMAGES]


def _primary_attempts(
    planner: Planner, ids: list[str], picks: list[ImageRef], choices: list[tuple]
) -> list[tuple[Attempt, ...]]:
    """Each item's own attempts; items sharing an image and a choice split its references."""
    groups: dict[tuple[str, tuple], list[int]] = defaultdict(list)
    for n, (image, choice) in enumerate(zip(picks, choices, strict=True)):
        groups[image.image_id, choice].append(n)
    attempts: list[tuple[Attempt, ...]] = [()] * len(ids)
    for members in groups.values():
        first = members[0]
        shared = planner.attempts_on(ids[first], picks[first], choices[first])
        for j, n in enumerate(members):
            own = shared[j :: len(members)] if planner.task == "anomaly" else shared
            attempts[n] = planner.take(ids[n], own)
    return attempts


def _reserve(planner: Planner, item_id: str, images: list[ImageRef], choice: tuple) -> tuple[Attempt, ...]:
    """Up to FALLBACK_ATTEMPTS untaken attempts of the item's choice on other images of its subject."""
    picked: list[Attempt] = []
    for image in images:
        picked.extend(planner.attempts_on(item_id, image, choice)[: FALLBACK_ATTEMPTS - len(picked)])
        if len(picked) >= FALLBACK_ATTEMPTS:
            break
    return planner.take(item_id, picked)


def _neighbour_references(context: CellContext, images: list[ImageRef]) -> dict[str, tuple[Reference, ...]]:
    """X-ray: each image's neighbours from the reference index, same side only, best first."""
    if context.neighbours is None:
        raise BuildError("X-ray anomaly items need the reference index; none was loaded")
    table = context.neighbours(image.image_id for image in images)
    limit = context.recipe.anomaly.max_references
    out = {}
    for image in images:
        side = context.plan.side(image.subject_id)
        refs = []
        for rank, (neighbour_id, score) in enumerate(table.get(image.image_id, []), start=1):
            neighbour = context.images_by_id.get(neighbour_id)
            if neighbour is None or neighbour.subject_id == image.subject_id:
                continue
            if context.plan.side(neighbour.subject_id) != side:
                raise BuildError(
                    f"neighbour {neighbour_id} of {image.image_id} is across the subject partition; "
                    "the reference index is stale: rerun `medscout-data index`"
                )
            refs.append(Reference(neighbour, rank=rank, score=score))
        out[image.image_id] = tuple(refs[:limit])
    return out


# ---------------------------------------------------------------- rounds 1..


@dataclass(frozen=True)
class Outcome:
    """What making one spec gave: the attempt used (index), or -1, the reason most attempts failed
    and how many were tried."""

    index: int
    reason: str = ""
    tried: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # attempts rejected, by reason, before this

    def describe(self) -> str:
        return f"no attempt worked ({self.tried} tried); most often: {self.reason}"


def record_outcomes(planner: Planner, specs: Iterable[ItemSpec], outcomes: dict[str, Outcome]) -> None:
    """Release the keys an item reserved but did not use; remember every key that failed."""
    for spec in specs:
        outcome = outcomes[spec.id]
        used = outcome.index if outcome.index >= 0 else len(spec.attempts)
        for position, attempt in enumerate(spec.attempts):
            key = attempt.key(spec.id)
            if position < used:
                planner.tried.add(key)
                planner.taken.discard(key)
            elif position > used:
                planner.taken.discard(key)


def plan_replacements(
    planner: Planner, failed: list[ItemSpec], made: list[ItemSpec], outcomes: dict[str, Outcome], round_: int
) -> list[ItemSpec]:
    """New attempts for the items of `failed` (earlier rounds made none of theirs), in id order.

    Each round gives every such item up to ROUND_ATTEMPTS x 4^(round - 1) attempts never tried in
    this cell: whether an anomaly or jigsaw attempt works depends only on its key, so a cell never
    tries a key twice and the whole search is bounded by what the side's images can hold.
    """
    budget = ROUND_ATTEMPTS * 4 ** (round_ - 1)
    made_choices = Counter(
        (spec.side, spec.attempts[outcomes[spec.id].index].choice)
        for spec in made
        if outcomes[spec.id].index >= 0
    )
    specs = []
    for spec in sorted(failed, key=lambda s: s.id):
        draw = round_ if planner.task == "scale" else 0
        choice = spec.choice
        attempts = _collect(planner, spec.id, _walk(planner, spec, round_), choice, draw, budget)
        if not attempts and planner.task != "scale":
            choice, attempts = _other_choice(planner, spec, round_, made_choices, budget)
        made_choices[spec.side, choice] += 1
        specs.append(replace(spec, choice=choice, attempts=planner.take(spec.id, attempts), round=round_))
    return specs


def _walk(planner: Planner, spec: ItemSpec, round_: int) -> Iterator[ImageRef]:
    """The images a replacement may use, in order: the item's subject, then the other subjects of its side."""
    context = planner.context
    rng = rng_for(spec.seed, "replace", round_)
    home = spec.subject_id
    subjects = context.subjects(spec.side)
    tried_images = {a.image.image_id for a in spec.attempts} if planner.task == "scale" else set()
    others = [subjects[i] for i in rng.permutation(len(subjects)) if subjects[i] != home]
    for subject in [home, *others]:
        images = context.images_by_subject[subject]
        for i in rng.permutation(len(images)):
            if images[i].image_id not in tried_images:
                yield images[i]


def _collect(
    planner: Planner, item_id: str, images: Iterator[ImageRef], choice: tuple, draw: int, budget: int
) -> list[Attempt]:
    """Up to `budget` free attempts of `choice` along `images` (references looked up a chunk at a time)."""
    picked: list[Attempt] = []
    while len(picked) < budget:
        chunk = list(itertools.islice(images, LOOKUP_CHUNK))
        if not chunk:
            break
        planner.references(chunk)
        for image in chunk:
            picked.extend(planner.attempts_on(item_id, image, choice, draw)[: budget - len(picked)])
            if len(picked) >= budget:
                break
    return picked


def _other_choice(
    planner: Planner, spec: ItemSpec, round_: int, made_choices: Counter, budget: int
) -> tuple[tuple, list[Attempt]]:
    """The side has no untried attempt of the item's choice: take the choice it has made least of."""
    options = [o for o in task_options(planner.task, planner.context) if o != spec.choice]
    order = {option: n for n, option in enumerate(options)}
    options.sort(key=lambda o: (made_choices[spec.side, o], order[o]))
    for option in options:
        attempts = _collect(planner, spec.id, _walk(planner, spec, round_), option, 0, budget)
        if attempts:
            return option, attempts
    return spec.choice, []
