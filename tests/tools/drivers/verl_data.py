"""Run in the verl environment (no medscout-data): the exported Parquet through verl's own dataset class
and the exported reward through verl's own loader and reward manager, on the CPU.

    python verl_data.py REQUEST.json      (prints one JSON line)

REQUEST: {"parquet": path, "reward": path, "model": folder, "responses": [[id, text], ...]}

A full verl run needs GPUs (Ray workers, vLLM or SGLang rollouts); these are the two parts of it that
touch what `export --format verl` writes: `RLHFDataset` builds the chat messages from the rows, and
`NaiveRewardManager` scores decoded responses with `custom_reward_function` (path + name).
"""

import json
import sys
from pathlib import Path


def dataset_messages(parquet, model):
    """verl's RLHFDataset over the export: every row's raw chat messages (image parts as markers)."""
    from omegaconf import OmegaConf
    from transformers import AutoProcessor, AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(model)
    processor = AutoProcessor.from_pretrained(model)
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 8192,
            "filter_overlong_prompts": False,
        }
    )
    dataset = RLHFDataset(data_files=[parquet], tokenizer=tokenizer, processor=processor, config=config)
    rows = {}
    for k in range(len(dataset)):
        item = dataset[k]
        messages = []
        for message in item["raw_prompt"]:
            parts = message["content"]
            parts = [parts] if isinstance(parts, str) else parts
            shown = [
                {"type": "image", "size": list(p["image"].size)} if p["type"] == "image" else p["text"]
                for p in parts
            ]
            messages.append({"role": message["role"], "content": shown})
        rows[item["extra_info"]["id"]] = messages
    return tokenizer, rows


def reward_manager_scores(tokenizer, reward, parquet, responses):
    """NaiveRewardManager with the exported compute_score, loaded the way verl's trainer loads it."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.workers.reward_manager.naive import NaiveRewardManager

    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": reward, "name": "compute_score"}}}
    )
    compute_score = get_custom_reward_fn(config)
    table = {row["extra_info"]["id"]: row for row in pq.read_table(parquet).to_pylist()}
    rows = [table[item_id] for item_id, _ in responses]
    prompt = tokenizer(["question"] * len(rows), return_tensors="pt")["input_ids"]
    encoded = [tokenizer(text)["input_ids"] for _, text in responses]
    width = max(len(ids) for ids in encoded)
    response_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), prompt.shape[1] + width), dtype=torch.long)
    mask[:, : prompt.shape[1]] = 1
    for i, ids in enumerate(encoded):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, prompt.shape[1] : prompt.shape[1] + len(ids)] = 1
    data = DataProto.from_dict(
        tensors={"prompts": prompt, "responses": response_ids, "attention_mask": mask},
        non_tensors={
            "data_source": np.array([r["data_source"] for r in rows], dtype=object),
            "reward_model": np.array([r["reward_model"] for r in rows], dtype=object),
            "extra_info": np.array([dict(r["extra_info"]) for r in rows], dtype=object),
        },
    )
    manager = NaiveRewardManager(tokenizer=tokenizer, num_examine=0, compute_score=compute_score)
    result = manager(data, return_dict=True)
    lengths = [len(ids) for ids in encoded]
    scores = [float(result["reward_tensor"][i, n - 1]) for i, n in enumerate(lengths)]
    extra = {
        key: [float(v) for v in values]
        for key, values in result["reward_extra_info"].items()
        if key in ("score", "accuracy", "format", "cot")
    }
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded]
    return scores, extra, decoded


def main():
    request = json.loads(Path(sys.argv[1]).read_text())
    import verl

    tokenizer, messages = dataset_messages(request["parquet"], request["model"])
    scores, extra, decoded = reward_manager_scores(
        tokenizer, request["reward"], request["parquet"], request["responses"]
    )
    print(
        json.dumps(
            {
                "verl": verl.__version__,
                "messages": messages,
                "scores": scores,
                "extra": extra,
                "decoded": decoded,
            }
        )
    )


if __name__ == "__main__":
    main()
