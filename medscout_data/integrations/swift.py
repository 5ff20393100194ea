"""ms-swift GRPO rewards: one ORM class per Dense Geometric Reward component, for its `orms` registry.

ms-swift logs each reward under its class name, so every component is its own
class (`MedScoutAccuracy`, `MedScoutFormat`, `MedScoutCot`, `MedScoutTotal`)
registered under its own name (`medscout_accuracy`, ...). Both ways ms-swift
builds and calls a reward work:

- ms-swift 4.x: `orms[name](args=args)`, then `reward(completions, **row_columns)`;
- ms-swift 3.x: `orms[name](**kwargs)` with only those `__init__` parameters
  that exist on its training args (so `__init__` takes none but `args`), then the
  same call.

The row columns the rewards read are the export's `task`, `variant` and
`target`; completions may be strings or chat messages. Profile and mode are
class attributes, not constructor arguments (ms-swift 3.x would fill a
parameter named like one of its training args): `configured(profile, mode)`
makes classes with other settings, and `register(orms, ...)` puts them in a
registry. This module needs neither ms-swift nor anything beyond the scorer,
so the exported `plugin.py` runs with the reward (`evaluation/reward.py`) copied beside it.

    from swift.rewards import orms                 # ms-swift 4.x (3.x: swift.plugin)
    from medscout_data.integrations.swift import register
    register(orms, profile="official", mode="cot")
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from medscout_data.evaluation.reward import COMPONENTS, MODES, PROFILES, DenseGeometricReward

REWARD_NAMES = {component: f"medscout_{component}" for component in COMPONENTS}
CLASS_NAMES = {"accuracy": "MedScoutAccuracy", "format": "MedScoutFormat", "cot": "MedScoutCot"}
CLASS_NAMES["total"] = "MedScoutTotal"


class MedScoutReward:
    """Base of the ORM classes: one Dense Geometric Reward component per class."""

    component = "total"
    profile = "official"
    mode = "direct"

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        self.args = args
        self._reward = DenseGeometricReward(self.component, self.profile, self.mode)

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float]:
        return self._reward(completions, **columns)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile!r}, mode={self.mode!r})"

    def __reduce__(self) -> tuple:
        # By settings, not by class name: a configured class shares its name with the default one.
        return (_restore, (self.component, self.profile, self.mode))


def _restore(component: str, profile: str, mode: str) -> MedScoutReward:
    return configured(profile, mode)[REWARD_NAMES[component]]()


def configured(profile: str = "official", mode: str = "direct") -> dict[str, type[MedScoutReward]]:
    """Registry name -> ORM class of every component under one profile and mode."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    return {
        REWARD_NAMES[component]: type(
            CLASS_NAMES[component],
            (MedScoutReward,),
            {"component": component, "profile": profile, "mode": mode, "__module__": __name__},
        )
        for component in COMPONENTS
    }


def register(
    orms: MutableMapping[str, Any], profile: str = "official", mode: str = "direct"
) -> dict[str, type[MedScoutReward]]:
    """Add the four ORM classes to an ms-swift `orms` registry; returns them."""
    classes = configured(profile, mode)
    orms.update(classes)
    return classes


def reward_names(mode: str) -> list[str]:
    """The components to pass as `--reward_funcs`: accuracy and format, and the CoT template in cot mode."""
    names = [REWARD_NAMES["accuracy"], REWARD_NAMES["format"]]
    return [*names, REWARD_NAMES["cot"]] if mode == "cot" else names


_DEFAULT = configured()
MedScoutAccuracy = _DEFAULT["medscout_accuracy"]
MedScoutFormat = _DEFAULT["medscout_format"]
MedScoutCot = _DEFAULT["medscout_cot"]
MedScoutTotal = _DEFAULT["medscout_total"]
