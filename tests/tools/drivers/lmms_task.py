"""Run in the lmms-eval tool environment (no medscout-data): load the exported task folder with
lmms-eval's TaskManager, build every document's request pieces, and score given responses with the
task's own process_results and aggregation.

    python lmms_task.py REQUEST.json     (prints one JSON line)

REQUEST: {"include_path": dir, "group": name, "responses": {task_name: {item_id: text}}}
"""

import hashlib
import json
import sys
from pathlib import Path

CLI_DEFAULT_TAGS = '[["<think>", "</think>"], ["<analysis>", "</analysis>"]]'  # lmms-eval 0.7.3's


def main():
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    from lmms_eval.api.reasoning import parse_reasoning_tags_config
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=request["include_path"], include_defaults=False)
    tasks = get_task_dict([request["group"]], manager)
    found = {}
    for key, value in tasks.items():  # {group: {task_name: task}} or {task_name: task}
        found.update(value if isinstance(value, dict) else {key: value})
    out = {"tasks": {}}
    for name, task in found.items():
        name = getattr(name, "group_name", None) or getattr(task, "task_name", None) or str(name)
        docs = task.test_docs()
        responses = request["responses"].get(name, {})
        samples, metrics = [], {}
        for doc in docs:
            visuals = (
                task.doc_to_visual(doc) if callable(task.doc_to_visual) else task.config.doc_to_visual(doc)
            )
            text = task.doc_to_text(doc)
            result = task.process_results(doc, [responses.get(doc["id"], "")])
            for metric, value in result.items():
                metrics.setdefault(metric, []).append(value)
            samples.append(
                {
                    "id": doc["id"],
                    "text": text,
                    "target": task.doc_to_target(doc),
                    "visuals": [
                        [v.mode, list(v.size), hashlib.md5(v.tobytes()).hexdigest()] for v in visuals
                    ],
                    "logged": result,
                }
            )
        aggregation = task.aggregation()
        out["tasks"][name] = {
            "samples": samples,
            "scores": {metric: aggregation[metric](values) for metric, values in metrics.items()},
            "metric_list": [m["metric"] for m in task.config.metric_list],
            "generation_kwargs": task.config.generation_kwargs,
            # the tags lmms-eval would cut out of responses before process_results (None: none)
            "reasoning_tags": parse_reasoning_tags_config(
                task_value=getattr(task.config, "reasoning_tags", None)
            ),
        }
    import medscout_data

    out["scorer_from"] = medscout_data.__file__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
