"""Run in the lmms-eval tool environment (no medscout-data): lmms-eval's own evaluator
(`simple_evaluate`) with its OpenAI-compatible model on the exported task folder.

    python lmms_run.py REQUEST.json      (prints one JSON line: per task, metrics and responses)

REQUEST: {"include_path": dir, "tasks": [names], "base_url": url, "model": name, "max_new_tokens": n}
"""

import json
import sys
from pathlib import Path


def main():
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    model_args = {
        "model_version": request["model"],
        "base_url": request["base_url"],
        "api_key": "EMPTY",
        "num_concurrent": 1,
        "prefix_aware_queue": False,
        "httpx_trust_env": False,
        "max_retries": 1,
        "timeout": 120,
    }
    results = simple_evaluate(
        model="openai",
        model_args=",".join(f"{key}={value}" for key, value in model_args.items()),
        tasks=request["tasks"],
        task_manager=TaskManager(include_path=request["include_path"], include_defaults=False),
        gen_kwargs=f"max_new_tokens={request['max_new_tokens']}",
        log_samples=True,
    )
    out = {}
    for task in request["tasks"]:
        metrics = {k.split(",")[0]: v for k, v in results["results"][task].items() if "," in k}
        responses = {}
        for sample in results["samples"][task]:
            response = sample["filtered_resps"][0]  # what process_results scored
            responses[sample["doc"]["id"]] = response[0] if isinstance(response, list) else response
        out[task] = {"metrics": metrics, "responses": responses}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
