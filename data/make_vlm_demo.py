"""Write the image demo set (deterministic). Run: python data/make_vlm_demo.py

- vlm_demo/*.png        small generated pictures: 1-3 shapes of one colour on a dark background
- vlm_demo.json         questions about them (colour, shape, count) with one-word answers, OpenAI messages with
                        an ``<image>`` placeholder and an ``images`` column (LLaMA-Factory's mllm layout)
- vlm_demo_test.json    the same questions about held-out pictures (never trained on)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 32
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (240, 220, 40)}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = {
    "colour": ("What colour are the shapes?", "Which colour is shown?", "Name the colour."),
    "shape": ("What shape is in the picture?", "Which shape do you see?", "Name the shape."),
    "count": ("How many shapes are there?", "Count the shapes.", "How many objects do you see?"),
}


def _draw(rng: random.Random, colour: str, shape: str, count: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (20, 20, 28))
    draw = ImageDraw.Draw(image)
    cells = rng.sample([(x, y) for x in range(2) for y in range(2)], count)
    for cx, cy in cells:
        size = rng.randint(9, 13)
        x0, y0 = cx * 16 + rng.randint(1, 15 - size), cy * 16 + rng.randint(1, 15 - size)
        box = (x0, y0, x0 + size, y0 + size)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    return image


def _rows(rng: random.Random, prefix: str, pictures: int) -> list[dict]:
    folder = HERE / "vlm_demo"
    folder.mkdir(exist_ok=True)
    rows = []
    for index in range(pictures):
        colour, shape, count = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randint(1, 3)
        name = f"{prefix}_{index:03d}.png"
        _draw(rng, colour, shape, count).save(folder / name, optimize=True)
        for kind, answer in (("colour", colour), ("shape", shape), ("count", COUNT_WORDS[count])):
            question = rng.choice(QUESTIONS[kind])
            rows.append({
                "messages": [
                    {"role": "user", "content": f"<image>{question}"},
                    {"role": "assistant", "content": answer},
                ],
                "images": [f"vlm_demo/{name}"],
            })
    return rows


def main() -> None:
    """Write the pictures and both question files."""
    rng = random.Random(15)
    for old in (HERE / "vlm_demo").glob("*.png"):
        old.unlink()
    train, test = _rows(rng, "train", 160), _rows(rng, "test", 24)
    rng.shuffle(train)
    (HERE / "vlm_demo.json").write_text(json.dumps(train, indent=1) + "\n")
    (HERE / "vlm_demo_test.json").write_text(json.dumps(test, indent=1) + "\n")


if __name__ == "__main__":
    main()
