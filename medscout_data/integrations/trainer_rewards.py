"""The Dense Geometric Reward as TRL, verl and EasyR1 call a reward: no glue, no package needed.

Each trainer calls its reward its own way; each entry point here is a thin
adapter over the one scorer (`evaluation.reward.reward`), so a response gets
the same components whichever trainer asks:

- TRL `GRPOTrainer(reward_funcs=trl_reward_funcs(profile, mode))`: one
  callable per component (`medscout_accuracy`, `medscout_format`, and
  `medscout_cot` in CoT mode), each called with the completions and every
  dataset column as keyword lists (it reads `task`, `variant`, `target`).
- verl `custom_reward_function.name=compute_score`:
  `verl_compute_score(data_source, solution_str, ground_truth, extra_info)`
  returns `{"score": total, "accuracy", "format", "cot"}`; verl uses `score`
  and logs the rest.
- EasyR1 `worker.reward.reward_function=FILE:compute_score` (batch type):
  `easyr1_compute_score(reward_inputs)` returns one dict per input with
  `overall` (the total) and the components.

verl's and EasyR1's data carry the truth as `ground_truth`, a JSON object
with the item's `task`, `variant` and `target` (`ground_truth_text`): the
reward needs nothing else. Like `integrations.swift`, this module imports only
the scorer, so `export` copies it beside the exported files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from medscout_data.evaluation.reward import DenseGeometricReward, Reward, reward

TRAINER_COMPONENTS = ("accuracy", "format", "cot")


def trl_reward_funcs(profile: str = "official", mode: str = "direct") -> list[DenseGeometricReward]:
    """TRL reward functions: accuracy and format, and the CoT template in CoT mode (TRL sums them
    with equal weights, which is the Dense Geometric Reward total, and logs each by its name)."""
    components = ["accuracy", "format", "cot"] if mode == "cot" else ["accuracy", "format"]
    return [DenseGeometricReward(component, profile, mode) for component in components]


def ground_truth_text(task: str, variant: str | None, target: str | Mapping[str, Any]) -> str:
    """The truth an exported row carries for verl / EasyR1: task, variant and target as JSON."""
    target = json.loads(target) if isinstance(target, (str, bytes)) else dict(target)
    return json.dumps({"task": task, "variant": variant or "", "target": target}, sort_keys=True)


def _item(ground_truth: str | Mapping[str, Any]) -> dict[str, Any]:
    item = json.loads(ground_truth) if isinstance(ground_truth, (str, bytes)) else dict(ground_truth)
    missing = [key for key in ("task", "target") if key not in item]
    if missing:
        raise ValueError(f"ground_truth lacks {', '.join(missing)}: export it with `medscout-data export`")
    return item


def components(result: Reward) -> dict[str, float]:
    """A reward's components by name, plus the total."""
    values = {name: float(getattr(result, name)) for name in TRAINER_COMPONENTS}
    return values | {"total": float(result.total)}


def verl_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str | Mapping[str, Any],
    extra_info: Mapping[str, Any] | None = None,
    *,
    profile: str = "official",
    mode: str = "direct",
    **_: Any,
) -> dict[str, float]:
    """verl's `compute_score`: `score` is the Dense Geometric Reward total."""
    values = components(reward(solution_str, _item(ground_truth), profile, mode))
    return {"score": values.pop("total"), **values}


def easyr1_compute_score(
    reward_inputs: Sequence[Mapping[str, Any]], *, profile: str = "official", mode: str = "direct"
) -> list[dict[str, float]]:
    """EasyR1's batch reward function: `overall` is the Dense Geometric Reward total."""
    out = []
    for row in reward_inputs:
        values = components(reward(row["response"], _item(row["ground_truth"]), profile, mode))
        out.append({"overall": values.pop("total"), **values})
    return out
