#!/usr/bin/env python3
"""Write the official code's downstream-task pickles as the JSON files editbench reads.

The task data of `editbench downstream` and a sweep's `eval.downstream` are the evaluation subsets in
`glue_eval/dataset/*.pkl` of the paper's official code (github.com/scalable-model-editing/unified-model-editing).
Each pickle is a Python list of plain dicts; this writes it unchanged as a JSON array, `<task>.json`:

    git clone https://github.com/scalable-model-editing/unified-model-editing
    python3 scripts/downstream_from_pickles.py unified-model-editing/glue_eval/dataset data/downstream

Only unpickle files you trust: a pickle can run code when it is loaded.
"""
import json
import pathlib
import pickle
import sys

TASKS = ["sst2", "mrpc", "cola", "rte", "nli", "mmlu", "sentiment_analysis", "dialogue"]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        with open(source / f"{task}.pkl", "rb") as f:
            items = pickle.load(f)
        (out / f"{task}.json").write_text(json.dumps(items))
        print(f"{task}: {len(items)} items -> {out / (task + '.json')}")


if __name__ == "__main__":
    main()
