"""Using the bench: Dense Geometric Reward scoring and the random / prior / classical baselines."""
