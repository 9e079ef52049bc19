"""Reward functions (pure Python): the built-ins, specs checked before training, user files, and the checks that
turn a broken reward function into one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.core.config import ConfigError, validate_config
from tunelab.core.rewards import (
    RewardError,
    build_rewards,
    check_spec,
    exact_answer,
    final_answer,
    length_reward,
    normalise_answer,
    regex_reward,
    think_format,
)


def chat(text: str) -> list[dict]:
    """A completion as trl hands it over for chat prompts."""
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("text", ["38", "38.0", "= 38.", "\\boxed{38}", "The sum is 38.", "<think>20+18</think> 38",
                                  "It is $38$", "38.00"])
def test_exact_answer_accepts_every_spelling_of_the_number(text: str) -> None:
    assert exact_answer([None], [chat(text)], answer=["38"]) == [1.0]
    assert exact_answer([None], [text], answer=[38]) == [1.0]  # plain-text completions and numeric columns too


@pytest.mark.parametrize("text", ["39", "3.8", "380", "", "\\boxed{37} though 38 was close", "<think>38</think> 40"])
def test_exact_answer_rejects_other_answers(text: str) -> None:
    assert exact_answer([None], [chat(text)], answer=["38"]) == [0.0]


def test_final_answer_and_normalisation() -> None:
    assert final_answer("first 12, then 1,000") == "1,000"
    assert normalise_answer("1,000") == normalise_answer("1000.0") == "1000"
    assert normalise_answer("2.50") == "2.5"
    assert normalise_answer(" Paris. ") == normalise_answer("paris") == "paris"
    assert final_answer("no number here\nParis") == "Paris"


def test_exact_answer_without_an_answer_column_says_so() -> None:
    with pytest.raises(RewardError, match="'answer' column"):
        exact_answer([None], ["38"])


def test_think_format() -> None:
    good = "<think>18 plus 20 is 38</think>\n38"
    assert think_format([None] * 5, [chat(good), good, "<think></think> 38", "<think>x</think>", "38"]) == [
        1.0, 1.0, 0.0, 0.0, 0.0]


def test_regex_and_length() -> None:
    assert regex_reward(r"^\d+$")([None] * 3, ["38", "a 38", chat("7")]) == [1.0, 0.0, 1.0]
    scores = length_reward(4)([None] * 5, ["one two three four", "one two", "", "a " * 8, "a b c d e"])
    assert scores == [1.0, 0.5, 0.0, 0.5, 0.8]
    assert all(0.0 <= s <= 1.0 for s in length_reward(1)([None], ["word " * 100]))


@pytest.mark.parametrize("spec, message", [
    ("exact", "'exact' is not a known reward function; valid choices: exact_answer, think_format, regex:PATTERN"),
    ("regex:(", "not a valid regular expression"),
    ("length:zero", "whole number of words"),
    ("length:0", "whole number of words"),
    ("missing.py:f", "names a file that does not exist"),
])
def test_bad_specs_name_the_value_and_the_choices(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="reward_funcs: ") as info:
        check_spec(spec)
    assert message in str(info.value)


def test_a_user_file_is_checked_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "my_rewards.py"
    path.write_text("raise SystemExit('must not run at check time')\n\ndef short(prompts, completions, **kw):\n"
                    "    return [1.0 / (1 + len(str(c))) for c in completions]\n")
    assert check_spec(f"{path}:short") == f"{path.resolve()}:short"
    with pytest.raises(ValueError, match="names no top-level function 'long'"):
        check_spec(f"{path}:long")
    relative = check_spec("my_rewards.py:short", base=tmp_path)
    assert relative == f"{path.resolve()}:short"


def test_run_config_resolves_reward_specs_and_refuses_split_prompt_groups(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "r.py").write_text("def f(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    base = {"stage": "grpo", "dataset": "prompts_demo"}
    config = validate_config({**base, "reward_funcs": ["r.py:f", "length:3"], "batch_size": 4})
    assert config.reward_funcs == [f"{(tmp_path / 'r.py').resolve()}:f", "length:3"]
    with pytest.raises(ConfigError, match=r"num_generations: 3 must divide batch_size x gradient_accumulation_steps "
                                          r"\(4 x 1 = 4"):
        validate_config({**base, "num_generations": 3, "batch_size": 4})
    assert validate_config({**base, "num_generations": 3, "batch_size": 1, "gradient_accumulation_steps": 3})
    with pytest.raises(ConfigError, match="reward_weights: 1 weights for 2 reward functions"):
        validate_config({**base, "reward_funcs": ["think_format", "length:3"], "reward_weights": [1.0], "batch_size": 4})
    with pytest.raises(ConfigError, match="reward_funcs: 'nope' is not a known reward function"):
        validate_config({**base, "reward_funcs": ["nope"], "batch_size": 4})
    with pytest.raises(ConfigError, match="reward_funcs: used by stages grpo, rloo, not by stage 'sft'"):
        validate_config({"stage": "sft", "reward_funcs": ["length:3"]})
    assert validate_config({**base, "stage": "rloo", "batch_size": 4}).stage == "rloo"


def test_checked_rewards_name_the_broken_function(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text(
        "def crash(prompts, completions, **kw):\n    raise KeyError('gold')\n\n"
        "def short(prompts, completions, **kw):\n    return [1.0]\n\n"
        "def text(prompts, completions, **kw):\n    return ['high'] * len(completions)\n\n"
        "def fine(prompts, completions, answer, **kw):\n    return [float(a == '1') for a in answer]\n\n"
        "async def later(prompts, completions, **kw):\n    return [None, 2]\n"
    )
    crash, short, text, fine, later = build_rewards([check_spec(f"{path}:{n}") for n in
                                                     ("crash", "short", "text", "fine", "later")])
    with pytest.raises(RewardError, match=r"^reward function 'crash' \(.*broken.py:crash\) raised KeyError: 'gold'$"):
        crash([None] * 2, ["a", "b"])
    with pytest.raises(RewardError, match="reward function 'short' .* returned 1 scores for 2 completions"):
        short([None] * 2, ["a", "b"])
    with pytest.raises(RewardError, match="'text' .* returned 'high' for completion 0; expected a finite number"):
        text([None] * 2, ["a", "b"])
    assert fine([None] * 2, ["a", "b"], answer=["1", "2"]) == [1.0, 0.0]
    assert later([None] * 2, ["a", "b"]) == [None, 2.0]


def test_names_are_unique() -> None:
    rewards = build_rewards(["regex:a", "regex:b", "length:2"])
    assert [r.__name__ for r in rewards] == ["regex", "regex_2", "length"]  # trl logs rewards/<name>/mean
    assert [r([None], ["a b"])[0] for r in rewards] == [1.0, 1.0, 1.0]


def test_the_example_user_file_loads_and_scores() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "my_rewards.py"
    (reward,) = build_rewards([check_spec(f"{path}:answer_first")])
    completions = [chat("38 it is"), chat("it is 38"), chat("40")]
    assert reward([None] * 3, completions, answer=["38"] * 3) == [1.0, 0.5, 0.0]
