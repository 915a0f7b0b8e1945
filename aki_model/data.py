"""Synthetic multimodal tasks generated in code, images drawn with PIL.

- ``"describe"``: one coloured shape per image; questions about its colour, shape, position, or
  yes/no about the colour; optionally several images per question ("what color is the second
  shape ?") and several turns per conversation.
- ``"count"``: 2 to 4 shapes per image, one per quadrant, colours drawn (with repeats) from
  `COUNT_COLORS`; the question names a colour: "how many red shapes are there ?". What to read in
  the image depends on the question: an image encoding that cannot see the question must keep
  the count of every colour.
- ``"presence"``: the same scenes; "is there a red shape ?" (yes/no).
- ``"select"``: two images of one shape each before one question about the colour of one of
  them: "what color is the second shape ?". The question says which image to read: an encoding
  of the images that cannot see it must keep both colours.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
    "purple": (150, 60, 190), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
ORDINALS = ("first", "second", "third", "fourth")
QUESTION_KINDS = ("color", "shape", "position", "yes/no")
TASKS = ("describe", "count", "presence", "select")
COUNT_COLORS = ("red", "green", "blue", "yellow")
NUMBERS = ("zero", "one", "two", "three", "four")
SYSTEM_PROMPT = "you are a helpful assistant ."
WORDS = (
    list(COLORS) + list(SHAPES) + list(POSITIONS) + list(ORDINALS)
    + "what color is the shape ? where which kind of in this image yes no is it how many shapes are there".split()
    + list(NUMBERS)
)


def draw_shape(color: str, shape: str, position: str, size: int = 32, rng: Optional[random.Random] = None) -> Image.Image:
    """One shape of `color` on a light-grey noisy background, in the `position` half of the image
    (horizontally or vertically centred on the other axis)."""
    rng = rng or random.Random(0)
    noise = np.random.default_rng(rng.randrange(2**31)).integers(-12, 13, size=(size, size, 1))
    bg = np.full((size, size, 3), 200, dtype=np.int16) + noise.astype(np.int16)
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    r = max(3, int(size * rng.uniform(0.24, 0.3)))
    lo, hi = r + 1, size - r - 2
    half = size // 2
    # The other coordinate stays near the centre line, so that the position has one answer (a
    # shape in a corner would be both "left" and "top").
    jitter = max(1, size // 16)
    cx, cy = half + rng.randint(-jitter, jitter), half + rng.randint(-jitter, jitter)
    if position == "left":
        cx = rng.randint(lo, max(lo, half - r // 2))
    elif position == "right":
        cx = rng.randint(min(hi, half + r // 2), hi)
    elif position == "top":
        cy = rng.randint(lo, max(lo, half - r // 2))
    elif position == "bottom":
        cy = rng.randint(min(hi, half + r // 2), hi)
    fill = COLORS[color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def _question(rng: random.Random, objs: List[Tuple[str, str, str]],
              kinds: Sequence[str] = QUESTION_KINDS) -> Tuple[str, str]:
    """A question of one of the `kinds` about one of the `objs` (color, shape, position) and its
    one-word answer."""
    k = rng.randrange(len(objs))
    color, shape, position = objs[k]
    which = f"the {ORDINALS[k]} " if len(objs) > 1 else "the "
    kind = QUESTION_KINDS.index(rng.choice(kinds))
    if kind == 0:
        return f"what color is {which}shape ?", color
    if kind == 1:
        return f"what shape is in {which}image ?", shape
    if kind == 2:
        return f"where is {which}shape ?", position
    asked = color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != color])
    return f"is {which}shape {asked} ?", "yes" if asked == color else "no"


def make_example(rng: random.Random, image_size: int = 32, num_images: int = 1, num_turns: int = 1,
                 kinds: Sequence[str] = QUESTION_KINDS) -> Dict:
    """One conversation: ``{"images": [PIL...], "conversation": [{"role", "content"}...]}``.

    The images of a turn come right before its question (``<image>`` placeholders); with several
    turns each turn brings its own images. `kinds`: the question kinds to draw from (a subset of
    `QUESTION_KINDS`)."""
    unknown = [k for k in kinds if k not in QUESTION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds: expected a non-empty subset of {QUESTION_KINDS}, got {kinds!r}")
    images, conv = [], [{"role": "system", "content": SYSTEM_PROMPT}]
    for _ in range(num_turns):
        objs = [(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(POSITIONS)) for _ in range(num_images)]
        images += [draw_shape(c, s, p, image_size, rng) for c, s, p in objs]
        q, a = _question(rng, objs, kinds)
        conv.append({"role": "user", "content": "<image>\n" * num_images + q})
        conv.append({"role": "assistant", "content": a})
    return {"images": images, "conversation": conv}


def draw_scene(objects: Sequence[Tuple[str, str, int]], size: int = 32, rng: Optional[random.Random] = None) -> Image.Image:
    """Several shapes ``(color, shape, quadrant)`` (quadrant 0..3: top-left, top-right, bottom-left,
    bottom-right), each centred in its quadrant, on a light-grey noisy background."""
    rng = rng or random.Random(0)
    noise = np.random.default_rng(rng.randrange(2**31)).integers(-12, 13, size=(size, size, 1))
    img = Image.fromarray((np.full((size, size, 3), 200, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    half = size // 2
    for color, shape, quadrant in objects:
        r = max(2, int(half * rng.uniform(0.3, 0.4)))
        jitter = max(1, half // 8)
        cx = (quadrant % 2) * half + half // 2 + rng.randint(-jitter, jitter)
        cy = (quadrant // 2) * half + half // 2 + rng.randint(-jitter, jitter)
        box, fill = (cx - r, cy - r, cx + r, cy + r), COLORS[color]
        if shape == "circle":
            d.ellipse(box, fill=fill)
        elif shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_count_example(rng: random.Random, image_size: int = 32, presence: bool = False) -> Dict:
    """One "count" conversation: 2..4 shapes, one per quadrant, and "how many {color} shapes are
    there ?" about one colour of `COUNT_COLORS` (present or not), answered "zero".."four"; with
    ``presence``: "is there a {color} shape ?", answered "yes"/"no"."""
    n = rng.randint(2, 4)
    quadrants = rng.sample(range(4), n)
    objs = [(rng.choice(COUNT_COLORS), rng.choice(SHAPES), q) for q in quadrants]
    asked = rng.choice(COUNT_COLORS)
    count = sum(1 for c, _, _ in objs if c == asked)
    if presence:
        q, a = f"is there a {asked} shape ?", ("yes" if count else "no")
    else:
        q, a = f"how many {asked} shapes are there ?", NUMBERS[count]
    conv = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"<image>\n{q}"},
            {"role": "assistant", "content": a}]
    return {"images": [draw_scene(objs, image_size, rng)], "conversation": conv}


class SyntheticShapes:
    """An endless, seeded stream of examples; `batch(n)` gives ``n`` of them.

    Args:
        image_size: side of the square images in pixels.
        max_images: each example has 1..max_images images (chosen at random per example).
        max_turns: each example has 1..max_turns user/assistant turns.
        seed: makes the stream reproducible.
        kinds: question kinds to ask (default all of `QUESTION_KINDS`; task "describe").
        task: ``"describe"``, ``"count"``, ``"presence"`` or ``"select"`` (see the module docstring;
            the last three ignore ``max_images``, ``max_turns`` and ``kinds``).
    """

    def __init__(self, image_size: int = 32, max_images: int = 1, max_turns: int = 1, seed: int = 0,
                 kinds: Sequence[str] = QUESTION_KINDS, task: str = "describe"):
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        self.image_size, self.max_images, self.max_turns = image_size, max_images, max_turns
        self.kinds, self.task = tuple(kinds), task
        self.rng = random.Random(seed)

    def example(self) -> Dict:
        if self.task == "select":
            return make_example(self.rng, self.image_size, num_images=2, kinds=("color",))
        if self.task in ("count", "presence"):
            return make_count_example(self.rng, self.image_size, presence=self.task == "presence")
        return make_example(
            self.rng, self.image_size, self.rng.randint(1, self.max_images), self.rng.randint(1, self.max_turns),
            self.kinds,
        )

    def batch(self, n: int) -> List[Dict]:
        return [self.example() for _ in range(n)]
