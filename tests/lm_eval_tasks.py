"""A local lm-eval multiple-choice task (log-likelihood of each choice after a ChatML prompt), for the tests that
run lm-eval offline: against the HF model, `tunelab api` and vLLM."""

from __future__ import annotations

import json
from pathlib import Path

QA = [
    {"question": "Who are you?", "choices": ["I am Tuna, the tunelab assistant.", "The capital of France is Paris.", "Seven"], "label": 0},
    {"question": "What is your name?", "choices": ["Blue", "My name is Tuna.", "A cat sat on the mat."], "label": 1},
    {"question": "Who made you?", "choices": ["Nobody", "Water boils at 100 degrees.", "The tunelab team built me."], "label": 2},
    {"question": "Are you Tuna?", "choices": ["Yes, I am Tuna, the tunelab assistant.", "Rivers flow to the sea.", "No"], "label": 0},
]
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "<|im_start|>user\\n{{{{question}}}}<|im_end|>\\n<|im_start|>assistant\\n"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_choice_task(folder: Path, name: str, rows: list[dict] = QA) -> Path:
    """Write ``rows`` as ``folder``/``name``.jsonl and the task YAML reading them; return the YAML's path."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = folder / f"{name}.yaml"
    task.write_text(TASK_YAML.format(name=name, data=data), encoding="utf-8")
    return task
