"""A user reward file for GRPO/RLOO: `reward_funcs: ["examples/my_rewards.py:answer_first"]`.

trl's signature: prompts and completions (for chat prompts, each completion is [{"role": "assistant", "content":
...}]), the dataset's other columns as keyword lists (one value per completion), plus trl's own keywords
(trainer_state, ...). Return one float per completion (None: no opinion on this one).
"""


def answer_first(prompts, completions, answer=None, **kwargs):
    """1.0 when the reply starts with the row's answer, 0.5 when it holds it elsewhere, else 0.0."""
    scores = []
    for completion, expected in zip(completions, answer or [None] * len(completions)):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        if expected is None:
            scores.append(None)
        elif text.strip().startswith(str(expected)):
            scores.append(1.0)
        else:
            scores.append(0.5 if str(expected) in text else 0.0)
    return scores
