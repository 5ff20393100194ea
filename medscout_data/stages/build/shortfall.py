"""What a build could not make, and the rule that stopped it: count shortfalls and balance shortfalls.

Every rejection reason names the recipe rule that made it, with its value
(`scale.max_enlargement 3`); `rule_of` reads the rule back, so the advice a
short cell gets names the rule that actually rejected its items, never a
rule that did not. A cell can also be full yet impossible to balance: when
the images of one side cannot carry a choice (an anomaly cell on the
posterior fossa, a jigsaw arrangement, a scale variant), replacements take
the other choices and the bench could not be balanced; `balance_short` says
which choice, how many, why and what would fill it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from medscout_data.recipe import Recipe
from medscout_data.stages.build.catalog import CellContext
from medscout_data.stages.build.planning import ItemSpec, Outcome, task_options
from medscout_data.stages.plan import BENCH, TRAIN

RULE = re.compile(r"\b((?:scale|jigsaw|anomaly|ingest)\.[a-z_]+)\b")
NOTHING_LEFT_RULE = "capacity"  # no rule rejected the item: its side had no image and choice left to try


def rule_of(reason: str) -> str:
    """The recipe rule a rejection reason names (`scale.max_enlargement`), or NOTHING_LEFT_RULE."""
    match = RULE.search(reason)
    return match.group(1) if match else NOTHING_LEFT_RULE


def rule_value(rule: str, recipe: Recipe) -> Any:
    """The recipe's current value of a rule (None when the recipe has no such key)."""
    section, _, key = rule.partition(".")
    value = getattr(getattr(recipe, section, None), key, None)
    return list(value) if isinstance(value, tuple) else value


def shown_value(rule: str, recipe: Recipe) -> str:
    """The rule's current value as the recipe would write it (3, not 3.0)."""
    value = rule_value(rule, recipe)
    return f"{value:g}" if isinstance(value, float) else str(value)


def rule_advice(rule: str, task: str, side: str, context: CellContext) -> str:
    """What would let items through `rule`, with the rule's current value."""
    recipe = context.recipe
    if rule == NOTHING_LEFT_RULE:
        return more_subjects(side, context) + _capacity_hint(task, recipe)
    now = f"{rule} (now {shown_value(rule, recipe)})"
    if rule == "scale.max_enlargement":
        return (
            f"the images are too small for the crops: raise {now}, lower scale.crop_size "
            f"(now {recipe.scale.crop_size}) or use larger source images"
        )
    if rule in ("scale.min_match_iou", "jigsaw.min_solution_margin"):
        return f"the images give more than one answer: more {side}-side subjects, or lower {now}"
    return f"relax {now} in the recipe, or add " + more_subjects(side, context)


def more_subjects(side: str, context: CellContext) -> str:
    subjects = len(context.subjects(side))
    fraction = context.recipe.pool.bench_fraction
    return (
        f"more {side}-side subjects (it has {subjects}; the plan puts about {fraction:.0%} of all "
        "subjects on the bench)"
    )


def _capacity_hint(task: str, recipe: Recipe) -> str:
    if task == "anomaly":
        return (
            f", a wider anomaly.ref_distance_mm (now {list(recipe.anomaly.ref_distance_mm)}) or a larger "
            f"anomaly.max_references (now {recipe.anomaly.max_references})"
        )
    return ""


def advice(reasons: Counter[str], task: str, side: str, context: CellContext) -> str:
    """Advice for every rule in `reasons`, the rule that rejected most first."""
    rules = Counter()
    for reason, count in reasons.items():
        rules[rule_of(reason)] += count
    ordered = sorted(rules, key=lambda r: (-rules[r], r))
    return "; ".join(f"{rule}: {rule_advice(rule, task, side, context)}" for rule in ordered)


@dataclass
class Rejections:
    """Rejected attempts of one task, per (side, balance key, rule), with one example reason each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def add(self, spec: ItemSpec, outcome: Outcome) -> None:
        for reason, count in outcome.rejected.items():
            key = (spec.side, balance_key(spec, spec.choice), rule_of(reason))
            self.counts[key] += count
            # the smallest reason text: the same whatever order the shards come back in
            self.examples[key] = min(reason, self.examples.get(key, reason))

    def by_rule(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, _, rule), count in self.counts.items():
            out[rule] += count
        return dict(sorted(out.items()))


def balance_key(spec: ItemSpec, choice: tuple[int, ...]) -> str:
    """The key split balances the bench over: scale variant, jigsaw permutation, anomaly cell."""
    if spec.task == "scale":
        return spec.variant
    return " ".join(map(str, choice))


def balance_options(task: str, context: CellContext) -> list[str]:
    if task == "scale":
        return ["tier", "box"]
    return [" ".join(map(str, option)) for option in task_options(task, context)]


def count_shortfall(
    task: str, specs: Iterable[ItemSpec], outcomes: dict[str, Outcome], context: CellContext
) -> dict[str, Any]:
    """Per side of a short cell: planned, made, why, and what would fill it."""
    out = {}
    specs = list(specs)
    for side in (BENCH, TRAIN):
        mine = [s for s in specs if s.side == side]
        failed = [s for s in mine if outcomes[s.id].index < 0]
        if not failed:
            continue
        reasons = Counter(outcomes[s.id].reason for s in failed)
        out[side] = {
            "planned": len(mine),
            "made": len(mine) - len(failed),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "rules": sorted({rule_of(r) for r in reasons}),
            "advice": advice(reasons, task, side, context),
        }
    return out


def balance_short(
    task: str,
    specs: Iterable[ItemSpec],
    outcomes: dict[str, Outcome],
    rejections: Rejections,
    context: CellContext,
) -> dict[str, list[dict[str, Any]]]:
    """Per side, every choice made fewer times than an even share of the side's planned items
    (so split could not balance that side over it): how many, why and what would fill it."""
    options = balance_options(task, context)
    out: dict[str, list[dict[str, Any]]] = {}
    specs = list(specs)
    for side in (BENCH, TRAIN):
        mine = [s for s in specs if s.side == side]
        if not mine:
            continue
        made = Counter(
            balance_key(s, s.attempts[outcomes[s.id].index].choice) for s in mine if outcomes[s.id].index >= 0
        )
        need = len(mine) // len(options)
        short = []
        for option in options:
            if made[option] >= need:
                continue
            reasons = Counter(
                {
                    rejections.examples[key]: count
                    for key, count in rejections.counts.items()
                    if key[0] == side and key[1] == option
                }
            )
            what = "variant" if task == "scale" else "permutation" if task == "jigsaw" else "cell"
            short.append(
                {
                    "choice": f"{what} {option}",
                    "made": made[option],
                    "needed": need,
                    "short": need - made[option],
                    "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "advice": _balance_advice(task, option, reasons, side, context),
                }
            )
        if short:
            out[side] = short
    return out


def _balance_advice(task: str, option: str, reasons: Counter[str], side: str, context: CellContext) -> str:
    text = advice(reasons, task, side, context) if reasons else more_subjects(side, context)
    if task == "anomaly":
        cells = list(context.recipe.anomaly.cells)
        text += f"; or take cell {option} out of anomaly.cells (now {cells})"
    return text
