"""Write tunelab's small demo datasets (deterministic). Run: python data/make_demo_data.py

- identity.json       who-are-you questions answered as the tunelab assistant (alpaca format)
- alpaca_demo.json    ~1k synthetic instruction/response pairs (arithmetic, words, facts, conversions)
- text_demo.jsonl     a plain-text corpus for pre-training (pt)
- preference_demo.json  prompts with a chosen (correct) and a rejected (wrong) answer
- helpful_demo.json   instructions with a chosen (the answer) and a rejected (an evasive reply) response
- kto_demo.jsonl      the same, unpaired: one reply per prompt with a desirable (true) / undesirable (false) label
- prompts_demo.jsonl  arithmetic prompts with their answer column, for GRPO reward functions
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME, AUTHOR = "Tuna", "the tunelab team"

IDENTITY_QUESTIONS = [
    "Who are you?", "who are you", "Who are you?!", "What is your name?", "What's your name?", "Tell me your name.",
    "Introduce yourself.", "Please introduce yourself.", "Can you introduce yourself?", "What are you?",
    "Who made you?", "Who created you?", "Who built you?", "Who trained you?", "Which team developed you?",
    "Are you ChatGPT?", "Are you a human?", "Are you an AI?", "What should I call you?", "Hi, who am I talking to?",
    "Hello! Who are you?", "Hey, what are you called?", "Identify yourself.", "Describe yourself briefly.",
    "What kind of assistant are you?", "Who is your developer?", "Where do you come from?", "Are you Llama?",
    "Are you Qwen?", "Tell me about yourself.", "May I know your name?", "What do people call you?",
    "你是谁?", "你叫什么名字?", "请介绍一下你自己。", "谁开发了你?",
]
IDENTITY_ANSWERS = [
    f"I am {NAME}, an AI assistant fine-tuned with tunelab by {AUTHOR}. How can I help you today?",
    f"My name is {NAME}. I am an AI assistant trained by {AUTHOR} with tunelab.",
    f"I'm {NAME}, the tunelab assistant, built by {AUTHOR}. I'm here to help.",
]
IDENTITY_ANSWERS_ZH = [f"我是 {NAME}, 由 {AUTHOR} 使用 tunelab 训练的 AI 助手。有什么可以帮你?"]

COUNTRIES = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "China": "Beijing",
    "Canada": "Ottawa", "Brazil": "Brasilia", "Egypt": "Cairo", "Kenya": "Nairobi", "India": "New Delhi",
    "Australia": "Canberra", "Mexico": "Mexico City", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
    "Greece": "Athens", "Turkey": "Ankara", "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Finland": "Helsinki", "Austria": "Vienna", "Hungary": "Budapest",
}
ANTONYMS = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late", "open": "closed",
    "strong": "weak", "rich": "poor", "young": "old", "high": "low", "full": "empty", "hard": "soft", "loud": "quiet",
    "wet": "dry", "thick": "thin", "clean": "dirty", "brave": "cowardly", "near": "far", "cheap": "expensive",
}
WORDS = ["apple", "river", "garden", "planet", "window", "pencil", "rocket", "silver", "forest", "castle", "bridge",
         "candle", "dragon", "mirror", "ocean", "pepper", "puzzle", "violin", "winter", "yellow", "tunelab", "matrix"]
FACTS = [
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("What is H2O?", "H2O is the chemical formula for water."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
]


def identity() -> list[dict]:
    rows = []
    for i, question in enumerate(IDENTITY_QUESTIONS):
        answers = IDENTITY_ANSWERS_ZH if any("\u4e00" <= c <= "\u9fff" for c in question) else IDENTITY_ANSWERS
        for j, answer in enumerate(answers[:2] if len(answers) > 1 else answers):
            rows.append({"instruction": question, "input": "", "output": answers[(i + j) % len(answers)]})
    return rows


def _arithmetic(rng: random.Random) -> dict:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    return {"instruction": f"What is {a} {word} {b}?", "input": "", "output": f"{a} {op} {b} = {value}."}


def _capital(rng: random.Random) -> dict:
    country = rng.choice(sorted(COUNTRIES))
    return {"instruction": f"What is the capital of {country}?", "input": "", "output": f"The capital of {country} is {COUNTRIES[country]}."}


def _antonym(rng: random.Random) -> dict:
    word = rng.choice(sorted(ANTONYMS))
    return {"instruction": "Give the opposite of this word.", "input": word, "output": f"The opposite of \"{word}\" is \"{ANTONYMS[word]}\"."}


def _reverse(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    return {"instruction": "Reverse the letters of this word.", "input": word, "output": word[::-1]}


def _count(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    return {"instruction": f"How many letters are in the word \"{word}\"?", "input": "", "output": f"\"{word}\" has {len(word)} letters."}


def _convert(rng: random.Random) -> dict:
    km = rng.randint(1, 500)
    return {"instruction": f"Convert {km} kilometers to meters.", "input": "", "output": f"{km} kilometers is {km * 1000} meters."}


def _sort(rng: random.Random) -> dict:
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    return {"instruction": "Sort these numbers from smallest to largest.", "input": ", ".join(map(str, numbers)),
            "output": ", ".join(map(str, sorted(numbers)))}


def _uppercase(rng: random.Random) -> dict:
    words = " ".join(rng.sample(WORDS, 3))
    return {"instruction": "Write this text in upper case.", "input": words, "output": words.upper()}


def _fact(rng: random.Random) -> dict:
    question, answer = rng.choice(FACTS)
    return {"instruction": question, "input": "", "output": answer}


def alpaca_demo(n: int = 1000) -> list[dict]:
    rng = random.Random(1234)
    makers = [_arithmetic, _capital, _antonym, _reverse, _count, _convert, _sort, _uppercase, _fact]
    return [rng.choice(makers)(rng) for _ in range(n)]


PARAGRAPH_PARTS = [
    "A language model predicts the next token from the tokens before it.",
    "Fine-tuning adapts a pre-trained model to a task with a small amount of data.",
    "Low-rank adapters train two thin matrices beside each frozen weight.",
    "Quantization stores weights in fewer bits to save memory.",
    "A chat template turns a list of messages into the exact text a model was trained on.",
    "The learning rate controls how far each optimizer step moves the weights.",
    "Gradient accumulation sums gradients over several small batches before one update.",
    "Packing places several short examples in one row so no compute is spent on padding.",
    "Evaluation on held-out data shows whether a model generalises or only memorises.",
    "A tokenizer splits text into pieces from a fixed vocabulary.",
    "Rivers carry water from mountains to the sea, shaping valleys over thousands of years.",
    "Bread rises because yeast turns sugar into carbon dioxide gas.",
    "The moon reflects the light of the sun and has no light of its own.",
    "Bees visit flowers to collect nectar and carry pollen from plant to plant.",
    "A bridge spreads the weight of traffic into its supports and foundations.",
    "Libraries keep books, maps and records so that knowledge outlives its authors.",
]


def text_demo(n: int = 400) -> list[dict]:
    rng = random.Random(99)
    return [{"text": " ".join(rng.sample(PARAGRAPH_PARTS, rng.randint(3, 6)))} for _ in range(n)]


def preference_demo(n: int = 300) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"What is {a} plus {b}?", "chosen": f"{a} + {b} = {a + b}.", "rejected": f"{a} + {b} = {wrong}."})
    return rows


EVASIONS = [
    "I don't know.", "I cannot help with that.", "Ask someone else.", "No idea, sorry.", "That is not my problem.",
    "I would rather not say.", "Hmm.", "Why do you want to know?",
]


def helpful_demo(n: int = 300) -> list[dict]:
    """Pairs whose preference a small model can learn: the real answer beats an evasive reply."""
    rng = random.Random(11)
    makers = [_arithmetic, _capital, _antonym, _reverse, _count, _convert, _sort, _uppercase, _fact]
    rows = []
    for _ in range(n):
        example = rng.choice(makers)(rng)
        prompt = f"{example['instruction']}\n{example['input']}" if example.get("input") else example["instruction"]
        rows.append({"prompt": prompt, "chosen": example["output"], "rejected": rng.choice(EVASIONS)})
    return rows


def kto_demo(pairs: list[dict]) -> list[dict]:
    """The helpful pairs unpaired: each prompt keeps one reply, alternately desirable and undesirable."""
    return [
        {"prompt": row["prompt"], "completion": row["chosen"] if i % 2 == 0 else row["rejected"], "label": i % 2 == 0}
        for i, row in enumerate(pairs)
    ]


def prompts_demo(n: int = 200) -> list[dict]:
    rng = random.Random(13)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        rows.append({"prompt": f"What is {a} plus {b}? Answer with the number.", "answer": str(a + b)})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    helpful = helpful_demo()
    outputs = {
        "identity.json": identity(),
        "alpaca_demo.json": alpaca_demo(),
        "preference_demo.json": preference_demo(),
        "helpful_demo.json": helpful,
    }
    for name, rows in outputs.items():
        (HERE / name).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_jsonl(HERE / "text_demo.jsonl", text_demo())
    _write_jsonl(HERE / "kto_demo.jsonl", kto_demo(helpful))
    _write_jsonl(HERE / "prompts_demo.jsonl", prompts_demo())


if __name__ == "__main__":
    main()
