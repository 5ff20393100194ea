"""Run in a tool environment: read bench shards and a staged repo with that environment's `datasets`
(3.x in the ms-swift 3 environment) and describe what it decoded.

    python datasets_read.py REQUEST.json     (prints one JSON line)

REQUEST: {"parquet": [paths], "staged": dir or null, "expect_error": [path] or null}
"""

import hashlib
import json
import sys
from pathlib import Path


def describe(dataset):
    rows = []
    for row in dataset:
        images = row["images"]
        rows.append(
            {
                "id": row["id"],
                "images": [
                    [
                        type(image).__module__,
                        image.mode,
                        list(image.size),
                        hashlib.md5(image.tobytes()).hexdigest(),
                    ]
                    for image in images
                ],
            }
        )
    return {"features": str(dataset.features["images"]), "rows": rows}


def main():
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    import datasets

    out = {"datasets": datasets.__version__}
    parquet = datasets.load_dataset("parquet", data_files=request["parquet"], split="train")
    out["parquet"] = describe(parquet)
    if request.get("staged"):
        out["staged"] = describe(datasets.load_dataset(request["staged"], "default", split="test"))
    if request.get("expect_error"):
        try:
            datasets.load_dataset("parquet", data_files=request["expect_error"], split="train")
            out["error"] = None
        except Exception as exc:  # what this datasets release says about the file
            out["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
