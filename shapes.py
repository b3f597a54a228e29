"""
shapes.py: the general world, standing in for Qwen3-VL's own pre-training: gray scenes of ordinary objects (circles,
squares, rings, bars, ...) with captions and questions about where things are, answered in the paper's box text
format, and a few chest radiographs under web-style captions (below). A tiny Qwen3-VL pre-trained on it (`python
sft.py config/general.py`) knows language, the answer formats and how to find things in an image, and has seen
radiographs but never a report or a lesion's box: the miniature's "general model", the row the paper calls
Qwen3-VL. Deterministic from a seed, ~1 ms per 128-px scene.

    caption                "Describe this image."
                           -> "A large bright circle in the upper left and a ring at the bottom."
    object_grounding       "Where is the small dark ring located in this image?"
                           -> "The small dark ring is located at the coordinates [..] on the image."
    all_objects_grounding  "Locate all the objects in this image."
                           -> "There is a large bright circle located at the coordinates [..]; a ..."
    phrase_grounding       "Please locate the following sentence: A ring at the bottom."
                           -> "This finding is located at [..] in the image."
    radiograph_caption     "Describe this image."   (a chest radiograph of synthetic.py, 10 % of the records)
                           -> "A chest X-ray showing cardiomegaly and left pleural effusion."

Scenes hold 1-4 objects of different shapes, 4-45 % of the image wide, bright or dark on a mottled gray background;
"left" is the image's left (there is no patient here). The answer sentences are records.py's, the same as the chest
X-ray tasks', so what transfers from this world is the format and the localization.

A web-scale pre-training has seen some radiographs, under captions rather than reports ("Chest X-ray showing a left
pleural effusion"): Qwen3-VL starts at about 72 % of RadVLM's report label F1 and 17 % of its grounding mAP
(docs/paper.md). So one record in ten is a chest radiograph of synthetic.py (studies far from those SFT trains on)
captioned the way a web page would: that it is a chest X-ray, and half the time what it shows, each finding named
with its side, never the report's templates and never a box (docs/results.md, #38).
"""

import itertools
import random

import numpy as np
from PIL import Image

import synthetic
from records import findings_answer, join_and, location_answer, make_record, phrase_answer

SHAPES = ("circle", "square", "triangle", "ring", "cross", "bar", "diamond")
SIZES = {"small": (0.04, 0.1), "medium": (0.1, 0.17), "large": (0.17, 0.23)}  # half-width, fraction of the image
TONES = {"bright": (0.8, 1.0), "dark": (0.02, 0.18)}
SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}  # disjoint scene-seed ranges
SCENE_TASKS = ("caption", "object_grounding", "all_objects_grounding", "phrase_grounding")  # of the shapes' scenes
TASKS = SCENE_TASKS + ("radiograph_caption",)
MIX = {"caption": 0.25, "object_grounding": 0.35, "all_objects_grounding": 0.25, "phrase_grounding": 0.15,
       "radiograph_caption": 0.11}  # 10 % of the records
RADIOGRAPH_OFFSET = 5_000_000  # the radiographs are synthetic studies this far into each split: none that SFT trains on
PROMPTS = {
    "caption": ["Describe this image.", "What do you see in this image?", "Write a description of this image."],
    "object_grounding": ["Where is the {name} located in this image?", "Locate the {name} in this image.",
                         "Give the bounding box of the {name} in this image."],
    "all_objects_grounding": ["Locate all the objects in this image.", "Where are the objects located in this image?"],
    "phrase_grounding": ["Please locate the following sentence: {phrase}",
                         "Where is the following object located on the image: {phrase}"],
}
RADIOGRAPH_CAPTIONS = ["A chest X-ray.", "A frontal chest radiograph.", "Chest X-ray of an adult patient."]


def _mask(shape, X, Y, cx, cy, r, size):
    """Inside-ness (0-1, anti-aliased over a pixel) of a shape of half-width r centred at (cx, cy)."""
    dx, dy = np.abs(X - cx), np.abs(Y - cy)
    distance = {  # signed distance in image fractions, > 0 inside
        "circle": r - np.sqrt(dx ** 2 + dy ** 2),
        "square": r - np.maximum(dx, dy),
        "diamond": r - (dx + dy),
        "ring": np.minimum(r - np.sqrt(dx ** 2 + dy ** 2), np.sqrt(dx ** 2 + dy ** 2) - 0.55 * r),
        "cross": np.maximum(np.minimum(r - dx, 0.3 * r - dy), np.minimum(0.3 * r - dx, r - dy)),
        "bar": np.minimum(r - dx, 0.35 * r - dy),
        "triangle": np.minimum(np.minimum(r - dy, (Y - cy + r) - 2 * dx), r - dx),
    }[shape]
    return np.clip(distance * size + 0.5, 0, 1)


def _place(box):
    """Where a box's centre lies: 'in the upper left', 'at the top', 'in the center', ..."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = "upper" if cy < 0.37 else "lower" if cy > 0.63 else "middle"
    column = "left" if cx < 0.37 else "right" if cx > 0.63 else "center"
    alone = {("upper", "center"): "at the top", ("lower", "center"): "at the bottom", ("middle", "left"): "on the left",
             ("middle", "right"): "on the right", ("middle", "center"): "in the center"}
    return alone.get((row, column), f"in the {row} {column}")


def generate_scene(seed, size=128):
    """One scene: {seed, image (np.uint8 HxW), objects [{name, shape, size, tone, box, place}]}."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = grid[None, :], grid[:, None]
    low = Image.fromarray(rng.normal(0, 1, (8, 8)).astype(np.float32))  # mottle: a smooth low-frequency texture
    mottle = np.asarray(low.resize((size, size), Image.BICUBIC))
    image = 0.45 + 0.08 * rng.uniform(-1, 1) * (X - 0.5) + 0.03 * mottle
    objects, centres = [], []
    for shape in rng.choice(SHAPES, size=rng.integers(1, 5), replace=False):
        size_word = str(rng.choice(list(SIZES)))
        r = rng.uniform(*SIZES[size_word])
        for _ in range(50):  # a place that does not cover the objects already drawn
            cx, cy = rng.uniform(r + 0.02, 1 - r - 0.02, 2)
            if all(np.hypot(cx - x, cy - y) > r + q + 0.02 for x, y, q in centres):
                break
        else:
            continue
        tone = str(rng.choice(list(TONES)))
        inside = _mask(str(shape), X, Y, cx, cy, r, size)
        image = image * (1 - inside) + rng.uniform(*TONES[tone]) * inside
        rows, cols = np.flatnonzero((inside > 0.5).any(1)), np.flatnonzero((inside > 0.5).any(0))
        box = [round(cols[0] / size, 2), round(rows[0] / size, 2), round((cols[-1] + 1) / size, 2),
               round((rows[-1] + 1) / size, 2)]
        centres.append((cx, cy, r))
        objects.append({"name": f"{size_word} {tone} {shape}", "shape": str(shape), "size": size_word, "tone": tone,
                        "box": box, "place": _place(box)})
    image = np.clip(image + rng.normal(0, 0.015, image.shape), 0, 1)
    return {"seed": seed, "image": (image * 255).astype(np.uint8), "objects": objects}


def _description(obj, rng):
    return f"A {obj['name']} {obj['place']}" if rng.random() < 0.7 else f"A {obj['shape']} {obj['place']}"


def build_records(scene, image_path, seed, tasks=None):
    """One record per task of `tasks` (default: SCENE_TASKS) about the scene, prompts drawn from `seed`."""
    rng = random.Random(seed)
    objects, records = scene["objects"], []
    for task in tasks or SCENE_TASKS:
        rid = f"shapes-{seed}-{task}"
        if task == "caption":
            parts = [_description(o, rng) for o in objects]
            answer = join_and([parts[0]] + [p[0].lower() + p[1:] for p in parts[1:]]) + "."
            records.append(make_record(rid, image_path, rng.choice(PROMPTS[task]), answer, task))
        elif task == "object_grounding":
            obj = rng.choice(objects)
            name = obj["name"] if rng.random() < 0.5 else obj["shape"]  # the shapes of a scene differ
            records.append(make_record(rid, image_path, rng.choice(PROMPTS[task]).format(name=name),
                                       location_answer(name, [obj["box"]]), task, boxes=[obj["box"]]))
        elif task == "all_objects_grounding":
            records.append(make_record(rid, image_path, rng.choice(PROMPTS[task]),
                                       findings_answer({o["name"]: [o["box"]] for o in objects}), task,
                                       boxes=[o["box"] for o in objects]))
        elif task == "phrase_grounding":
            obj = rng.choice(objects)
            records.append(make_record(rid, image_path, rng.choice(PROMPTS[task]).format(
                phrase=_description(obj, rng) + "."), phrase_answer([obj["box"]]), task, boxes=[obj["box"]]))
    return records


def radiograph_caption(study, rng):
    """A web page's caption of a chest radiograph (synthetic.generate_study's): what it is, and half the time what it
    shows, each finding by its name and side."""
    names = [f"{f['attrs']['side']} {f['name']}" if "side" in f["attrs"] else f["name"] for f in study["findings"]]
    if rng.random() < 0.5:
        return rng.choice(RADIOGRAPH_CAPTIONS)
    return f"A chest X-ray showing {join_and(names)}." if names else "A normal chest X-ray."


class ShapeRecords:
    """n records of a split as a list made on access, the same every time: record i is scene SPLIT_OFFSET[split] +
    i with a task drawn by MIX among `tasks`; the image travels in memory as record["image_array"]."""

    def __init__(self, split="train", n=None, size=128, tasks=None, seed=0):
        self.split, self.n, self.size, self.seed = split, n or 10_000, size, seed
        self.tasks = [t for t in (tasks or TASKS) if t in MIX]
        self.weights = [MIX[t] for t in self.tasks]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = random.Random(f"shapes-{self.split}-{self.seed}-{i}")
        task = rng.choices(self.tasks, self.weights)[0]
        if task == "radiograph_caption":
            study_seed = synthetic.SPLIT_OFFSET[self.split] + RADIOGRAPH_OFFSET + i
            study = synthetic.generate_study(study_seed, self.size)
            record = make_record(f"shapes-radiograph-{study_seed}", f"synthetic://{self.split}/{study_seed:08d}",
                                 rng.choice(PROMPTS["caption"]), radiograph_caption(study, rng), task)
            record["image_array"] = study["image"]
            return record
        for attempt in itertools.count():  # a scene without any object gives way to another one
            scene_seed = SPLIT_OFFSET[self.split] + i + attempt * self.n
            scene = generate_scene(scene_seed, self.size)
            if scene["objects"]:
                break
        record = build_records(scene, f"shapes://{self.split}/{scene_seed:08d}", scene_seed, [task])[0]
        record["image_array"] = scene["image"]
        return record


def corpus_texts(n=1000):
    """All prompt phrasings and the texts of n scenes' records (for the tiny BPE tokenizer)."""
    texts = [p.format(name="circle", phrase="") for phrasings in PROMPTS.values() for p in phrasings]
    for seed in range(n):
        for record in build_records(generate_scene(seed), "x", seed):
            texts += [turn["value"].replace("<image>\n", "") for turn in record["conversations"]]
    return texts
