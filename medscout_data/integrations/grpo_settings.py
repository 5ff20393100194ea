"""The paper's GRPO settings, written once and rendered for each trainer's command line.

Med-Scout (arXiv 2601.23220, training details) trains with GRPO: group size 8,
KL coefficient 0.04, AdamW, peak learning rate 1e-6 on a cosine schedule with
1% warmup, 7,200 steps, global batch 192, temperature 1.0 and completions of
up to 1,024 tokens. The authors' released training script differs in one
setting: it passes beta (the KL coefficient) 0.001. `export --paper-settings`
prints these as flags of the chosen trainer, with that note.

"Global batch 192" is read as completions per optimiser step (ms-swift's
and TRL's per-device batch counts completions): 24 prompts x 8 completions.
verl and EasyR1 count prompts, so they get 24 there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GrpoSettings:
    """GRPO hyper-parameters as the paper states them."""

    group_size: int = 8
    kl_coefficient: float = 0.04
    optimizer: str = "adamw_torch"
    learning_rate: float = 1e-6
    scheduler: str = "cosine"
    warmup_ratio: float = 0.01
    steps: int = 7200
    global_batch: int = 192  # completions per step
    temperature: float = 1.0
    max_completion_tokens: int = 1024

    @property
    def prompts_per_step(self) -> int:
        return self.global_batch // self.group_size


PAPER = GrpoSettings()
RELEASED_SCRIPT_NOTE = (
    "The paper states KL coefficient 0.04; the authors' released training script sets beta 0.001. "
    "Global batch 192 = completions per step (24 prompts x 8): per-device batch x gradient "
    "accumulation x GPUs must give it on your machines."
)


def swift_flags(s: GrpoSettings = PAPER) -> list[str]:
    """`swift rlhf --rlhf_type grpo` flags (ms-swift 3.x and 4.x)."""
    return [
        f"--num_generations {s.group_size}",
        f"--beta {s.kl_coefficient:g}",
        f"--optim {s.optimizer}",
        f"--learning_rate {s.learning_rate:g}",
        f"--lr_scheduler_type {s.scheduler}",
        f"--warmup_ratio {s.warmup_ratio:g}",
        f"--max_steps {s.steps}",
        f"--temperature {s.temperature:g}",
        f"--max_completion_length {s.max_completion_tokens}",
    ]


def trl_config(s: GrpoSettings = PAPER) -> dict[str, object]:
    """`trl.GRPOConfig` keyword arguments."""
    return {
        "num_generations": s.group_size,
        "beta": s.kl_coefficient,
        "optim": s.optimizer,
        "learning_rate": s.learning_rate,
        "lr_scheduler_type": s.scheduler,
        "warmup_ratio": s.warmup_ratio,
        "max_steps": s.steps,
        "temperature": s.temperature,
        "max_completion_length": s.max_completion_tokens,
    }


def verl_overrides(s: GrpoSettings = PAPER) -> list[str]:
    """`python -m verl.trainer.main_ppo` Hydra overrides."""
    return [
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.rollout.n={s.group_size}",
        "actor_rollout_ref.actor.use_kl_loss=True",
        f"actor_rollout_ref.actor.kl_loss_coef={s.kl_coefficient:g}",
        f"actor_rollout_ref.actor.optim.lr={s.learning_rate:g}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps_ratio={s.warmup_ratio:g}",
        f"actor_rollout_ref.actor.optim.lr_scheduler_type={s.scheduler}",
        f"trainer.total_training_steps={s.steps}",
        f"data.train_batch_size={s.prompts_per_step}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.prompts_per_step}",
        f"actor_rollout_ref.rollout.temperature={s.temperature:g}",
        f"data.max_response_length={s.max_completion_tokens}",
    ]


def easyr1_overrides(s: GrpoSettings = PAPER) -> list[str]:
    """`python -m verl.trainer.main config=...` (EasyR1) overrides."""
    return [
        "algorithm.adv_estimator=grpo",
        f"worker.rollout.n={s.group_size}",
        "algorithm.use_kl_loss=true",
        f"algorithm.kl_coef={s.kl_coefficient:g}",
        f"worker.actor.optim.lr={s.learning_rate:g}",
        f"worker.actor.optim.lr_warmup_ratio={s.warmup_ratio:g}",
        f"worker.actor.optim.lr_scheduler_type={s.scheduler}",
        f"trainer.max_steps={s.steps}",
        f"data.rollout_batch_size={s.prompts_per_step}",
        f"worker.actor.global_batch_size={s.prompts_per_step}",
        f"worker.rollout.temperature={s.temperature:g}",
        f"data.max_response_length={s.max_completion_tokens}",
    ]
