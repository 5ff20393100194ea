"""The entry files `export --format trl|verl|easyr1` writes beside the data: reward files and a TRL script.

Each reward file puts the scorer copy (`_medscout/`) first on `sys.path` and
binds the export's profile and mode, so the trainer imports it with no glue.
"""

from __future__ import annotations

from medscout_data.integrations.grpo_settings import RELEASED_SCRIPT_NOTE, trl_config
from medscout_data.integrations.vendor import BOOTSTRAP

TRL_REWARDS = '''"""TRL reward functions for Med-Scout-Bench, written by `medscout-data export --format trl`.

    from rewards import REWARD_FUNCS       # this folder on sys.path (train_grpo.py does it)
    GRPOTrainer(model=..., reward_funcs=REWARD_FUNCS, train_dataset=load_dataset(THIS_FOLDER, split=...))

medscout_accuracy (accuracy in [0, 1]), medscout_format (format in [0, 0.5]) and, in cot mode,
medscout_cot (0.5 for <think>...</think><answer>...</answer>): TRL sums them (the Dense Geometric
Reward total) and logs each as rewards/<name>/mean. They read the dataset columns task, variant, target.
"""

PROFILE = "{profile}"  # official: the authors' released reward code; paper: the paper's formulas
MODE = "{mode}"  # direct, or cot (adds the CoT template reward); written from `export --mode`
{bootstrap}
from medscout_data.integrations.trainer_rewards import trl_reward_funcs

REWARD_FUNCS = trl_reward_funcs(PROFILE, MODE)
'''

VERL_REWARD = '''"""verl reward function for Med-Scout-Bench, written by `medscout-data export --format verl`.

    custom_reward_function.path=THIS_FILE custom_reward_function.name=compute_score

compute_score returns {{"score": total, "accuracy", "format", "cot"}}: verl trains on `score` and logs
the components. ground_truth is the row's reward_model.ground_truth (task, variant, target as JSON).
"""

PROFILE = "{profile}"  # official: the authors' released reward code; paper: the paper's formulas
MODE = "{mode}"  # direct, or cot (adds the CoT template reward); written from `export --mode`
{bootstrap}
from medscout_data.integrations.trainer_rewards import verl_compute_score


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return verl_compute_score(data_source, solution_str, ground_truth, extra_info, profile=PROFILE, mode=MODE)
'''

EASYR1_REWARD = '''"""EasyR1 reward function for Med-Scout-Bench, written by `export --format easyr1`.

    worker.reward.reward_function=THIS_FILE:compute_score

A batch reward: one dict per response with `overall` (the Dense Geometric Reward total), `accuracy`,
`format` and `cot`. ground_truth is the row's `answer` column (task, variant, target as JSON).
"""

REWARD_NAME = "medscout"
REWARD_TYPE = "batch"
PROFILE = "{profile}"  # official: the authors' released reward code; paper: the paper's formulas
MODE = "{mode}"  # direct, or cot (adds the CoT template reward); written from `export --mode`
{bootstrap}
from medscout_data.integrations.trainer_rewards import easyr1_compute_score


def compute_score(reward_inputs, **kwargs):
    return easyr1_compute_score(reward_inputs, profile=PROFILE, mode=MODE)
'''

TRL_SCRIPT = '''"""GRPO on this folder with TRL, written by `medscout-data export --format trl`.

    python train_grpo.py --model MODEL --output-dir OUT [--max-steps N] [--num-generations G] ...

Defaults are the paper's settings (Med-Scout, arXiv 2601.23220): {settings}.
{note}
"""

import argparse
import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PAPER = {config!r}


def main():
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", required=True, help="a local model folder or a Hub model id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--split", default="{split}")
    parser.add_argument("--max-steps", type=int, default=PAPER["max_steps"])
    parser.add_argument("--num-generations", type=int, default=PAPER["num_generations"])
    parser.add_argument("--per-device-batch", type=int, default=PAPER["num_generations"])
    parser.add_argument("--max-completion-length", type=int, default=PAPER["max_completion_length"])
    parser.add_argument("--beta", type=float, default=PAPER["beta"])
    parser.add_argument("--learning-rate", type=float, default=PAPER["learning_rate"])
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (tests, smoke runs)")
    args = parser.parse_args()

    from datasets import load_dataset
    from rewards import REWARD_FUNCS
    from trl import GRPOConfig, GRPOTrainer

    settings = dict(PAPER)
    settings.update(
        max_steps=args.max_steps,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        beta=args.beta,
        learning_rate=args.learning_rate,
    )
    if "warmup_ratio" not in {{f.name for f in dataclasses.fields(GRPOConfig)}}:
        settings["warmup_steps"] = settings.pop("warmup_ratio")  # transformers >= 5.12: a float is a ratio
    config = GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.per_device_batch,
        save_steps=args.save_steps,
        logging_steps=1,
        report_to=[],
        use_cpu=args.cpu,
        bf16=False,
        **settings,
    )
    dataset = load_dataset(HERE, split=args.split)
    trainer = GRPOTrainer(model=args.model, reward_funcs=REWARD_FUNCS, args=config, train_dataset=dataset)
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
'''

TEMPLATES = {"trl": TRL_REWARDS, "verl": VERL_REWARD, "easyr1": EASYR1_REWARD}


def reward_file(fmt: str, profile: str, mode: str) -> str:
    """The reward entry file of a trainer export."""
    return TEMPLATES[fmt].format(profile=profile, mode=mode, bootstrap=BOOTSTRAP)


def trl_script(split: str) -> str:
    """`train_grpo.py`: TRL's GRPOTrainer on the exported folder, the paper's settings as defaults."""
    config = trl_config()
    settings = ", ".join(f"{key} {value}" for key, value in config.items())
    return TRL_SCRIPT.format(settings=settings, note=RELEASED_SCRIPT_NOTE, config=config, split=split)
