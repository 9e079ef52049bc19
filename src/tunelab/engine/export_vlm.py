"""What an export does differently for a vision-language model: it loads with AutoModelForImageTextToText, saves the
processor (with a chat template that takes image parts), and verifies on a prompt that holds an image.

The saved chat template is the registry template the model was trained with, preceded by a prelude that turns
content parts into text with the processor's image text (core.media.image_chat_template), so that plain
transformers' ``processor.apply_chat_template`` renders an image message exactly as tunelab trained and serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.core.media import image_chat_template
from tunelab.core.template_choice import TemplateChoice

VERIFY_QUESTION = "What colour are the shapes?"
# The same question as transformers' chat templates take it: an image part, then the text.
VERIFY_PARTS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": VERIFY_QUESTION}]}]


def verify_picture() -> Any:
    """A fixed 64x64 picture (a red square and a blue disc on white) for the image prompt of the check."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((6, 6, 28, 28), fill=(220, 30, 30))
    draw.ellipse((34, 30, 58, 54), fill=(30, 60, 220))
    return picture


def prompt_inputs(processor: Any, choice: TemplateChoice) -> dict[str, Any]:
    """The verification prompt with its picture, rendered with the registry template as serving does, as model inputs."""
    from tunelab.engine.vlm import image_text

    messages = [{"role": "user", "content": image_text(processor) + VERIFY_QUESTION}]
    text = choice.template.render(messages, add_generation_prompt=True, model=choice.entry).text
    return dict(processor(text=[text], images=[verify_picture()], add_special_tokens=False, return_tensors="pt"))


def save_processor(folder: Path, processor: Any, choice: TemplateChoice) -> None:
    """Save the processor (its tokenizer included) with the registry template made to take image parts."""
    from tunelab.engine.vlm import image_text

    template = image_chat_template(choice.template.serving_jinja, image_text(processor))
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    processor.save_pretrained(str(folder))


def template_renders_inputs(folder: Path, inputs: dict[str, Any]) -> bool:
    """Whether plain transformers' AutoProcessor of the export turns the image message into the same input ids."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    text = processor.apply_chat_template(VERIFY_PARTS, add_generation_prompt=True, tokenize=False)
    again = processor(text=[text], images=[verify_picture()], add_special_tokens=False, return_tensors="pt")
    return again["input_ids"][0].tolist() == inputs["input_ids"][0].tolist()
