"""Run in a tool environment (ms-swift 3.x or 4.x, no medscout-data): the exported plugin through
ms-swift's own plugin import, dataset loader, reward construction and reward call.

    python swift_rewards.py REQUEST.json      (prints one JSON line: names, classes, rewards)

REQUEST: {"plugin": path, "jsonl": path, "completions": [[text, ...] per row], "names": [...]}
"""

import json
import sys
import types
from pathlib import Path


def load_rows(jsonl, major):
    """The exported JSONL through ms-swift's loader, with the columns GRPO keeps."""
    if major >= 4:
        from swift.dataset import load_dataset
    else:
        from swift.llm import load_dataset
    train, _ = load_dataset([jsonl], remove_unused_columns=False)
    return [dict(row) for row in train]


def build_rewards(names, major):
    """Reward objects built the way each ms-swift builds them for GRPO."""
    if major >= 4:
        from swift.rlhf_trainers.utils import resolve_reward_funcs

        funcs, logged = resolve_reward_funcs(list(names), args=types.SimpleNamespace())
        return funcs, logged
    import torch
    from swift.trainers.rlhf_trainer.grpo_trainer import GRPOTrainer

    # GRPOTrainer._prepare_rewards itself, on a trainer object holding only what it reads.
    trainer = types.SimpleNamespace(
        args=types.SimpleNamespace(reward_weights=None, reward_model_plugin=None),
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
        processing_class=None,
        is_deepspeed_enabled=False,
    )
    try:
        GRPOTrainer._prepare_rewards(trainer, list(names))
    except (
        AttributeError
    ) as exc:  # a later part of the method needs a real trainer; rewards are built by then
        if not getattr(trainer, "reward_funcs", None):
            raise
        print(f"note: stopped after building rewards ({exc})", file=sys.stderr)
    return trainer.reward_funcs, trainer.reward_func_names


def call_rewards(funcs, rows, completions, major):
    """Rewards per function for every (row, completion), as ms-swift calls them."""
    import torch

    samples = []
    for row, texts in zip(rows, completions, strict=True):
        for text in texts:
            samples.append({**row, "messages": [*row["messages"], {"role": "assistant", "content": text}]})
    if major >= 4:
        from swift.rl_core.data import GRPOSample
        from swift.rl_core.grpo_algorithm import compute_rewards_per_func

        grpo = [GRPOSample.from_row(sample) for sample in samples]
        table = compute_rewards_per_func(grpo, funcs, [None] * len(funcs), device=torch.device("cpu"))
        return table.T.tolist()
    from swift.llm import RowPreprocessor

    # GRPOTrainer._compute_rewards_per_func: completions from the last message, every column batched.
    texts = [sample["messages"][-1]["content"] for sample in samples]
    kwargs = {"trainer_state": None, **RowPreprocessor.rows_to_batched(samples)}
    return [list(map(float, func(texts, **kwargs))) for func in funcs]


def main():
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    import swift
    from swift.utils import import_external_file

    major = int(swift.__version__.split(".")[0])
    plugin = import_external_file(request["plugin"])
    registry = "swift.rewards" if major >= 4 else "swift.plugin"
    orms = __import__(registry, fromlist=["orms"]).orms
    rows = load_rows(request["jsonl"], major)
    funcs, logged = build_rewards(request["names"], major)
    rewards = call_rewards(funcs, rows, request["completions"], major)
    import medscout_data

    print(
        json.dumps(
            {
                "swift": swift.__version__,
                "registered": sorted(name for name in orms if name.startswith("medscout_")),
                "logged_names": logged,
                "settings": [plugin.PROFILE, plugin.MODE],
                "row_ids": [row["id"] for row in rows],
                "row_columns": sorted(rows[0]),
                "rewards": rewards,
                "scorer_from": medscout_data.__file__,
            }
        )
    )


if __name__ == "__main__":
    main()
