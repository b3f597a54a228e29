"""
records.py: the record vocabulary: tasks, prompts, answer sentences, the box text format, and reading, writing and
checking records. Plain Python (no torch, no images), so that the synthetic world, the dataset converters and the
rewards (which a reward server or a grader may run on their own) share one source of truth without importing
the training stack.

One record format everywhere, the RadVLM/LLaVA one, so the authors' released instruction data works as is:

    {"id": "...", "image": "path/to/image.png",
     "conversations": [{"from": "human", "value": "<image>\\nWrite a radiology report for this Chest X-ray."},
                       {"from": "gpt", "value": "The heart size is normal. ..."}],
     "task": "report", "boxes": [[x0, y0, x1, y1], ...], "labels": {...}}   # optional ground truth

Boxes are the paper's text format: normalized 0-1 `[x_min, y_min, x_max, y_max]`, 2 decimals, trailing
zeros dropped, several joined "[..], [..] and [..]". `format_boxes` / `parse_boxes` below are the only box
formatter and parser of the project; the prompts of every task live here too.

Words, one meaning each, in every file:
- record task: a record's own `task`, one of TASKS (or GENERAL_TASKS in the general world);
- step task: what one GRPO step trains, "report" or "grounding" (TASK_GROUPS maps it to its record tasks);
- the `task` setting of grpo.py: "report", "grounding" or "both" (steps alternate);
- reward kind (`rewards.task_kind`): how an answer is scored, "report", "classification" or "grounding";
- gold answer: the record's own answer (its last gpt turn); completion: what a model wrote for its prompt.
"""

import json
import math
import os
import re

TASKS = ("report", "classification", "anatomical_grounding", "abnormality_grounding", "phrase_grounding",
         "conversation")
GROUNDING_TASKS = ("anatomical_grounding", "abnormality_grounding", "phrase_grounding")
TASK_GROUPS = {"report": ("report",), "grounding": GROUNDING_TASKS}  # the two tasks GRPO trains: their record tasks
GENERAL_TASKS = ("caption", "object_grounding", "all_objects_grounding", "radiograph_caption")  # shapes.py's own
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices")  # the 14 CheXpert observations, keys of every `labels` dict
THINK_SUFFIX = " /think"  # appended to the user turn to ask a Qwen3 model for <think>...</think> first

# Several phrasings per task, as in the authors' data code; {name} / {phrase} are filled in by the builders.
PROMPTS = {
    "report": [
        "Write a radiology report for this Chest X-ray.",
        "Please write the findings section of a radiology report for this chest radiograph.",
        "Describe the findings of this Chest X-ray as a radiologist would.",
        "Generate a radiology report for the given chest X-ray image.",
    ],
    "classification": [
        "Are there any abnormalities on this Chest X-ray?",
        "Which abnormalities can be identified on this chest radiograph?",
        "List the abnormalities visible in this Chest X-ray.",
    ],
    "anatomical_grounding": [
        "Where is the {name} located in this Chest X-ray?",
        "Locate the {name} on this chest radiograph.",
        "Give the bounding box of the {name} in this Chest X-ray.",
    ],
    "abnormality_grounding": [
        "Where is the {name} located in this Chest X-ray?",
        "Locate the {name} on this chest radiograph.",
        "Please provide the bounding box of the {name} on this image.",
    ],
    "abnormality_grounding_all": [
        "Locate all the abnormalities on this Chest X-ray.",
        "Where are the abnormalities located in this chest radiograph?",
    ],
    "phrase_grounding": [
        "Please locate the following sentence: {phrase}",
        "Where is the following finding located on the image: {phrase}",
    ],
}
BOX_FORMAT_HINT = ("Answer with normalized coordinates [x_min, y_min, x_max, y_max] between 0 and 1, "
                   "with 2 decimals.")  # told to general Qwen3-VL models, which natively use 0-1000 integers

# The answer sentences of the paper's tasks, used by the synthetic world and by every dataset converter.
NO_ABNORMALITY = "No abnormalities are identified on this Chest X-ray."


def join_and(words):
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def classification_answer(names):
    """Abnormality names -> "The following abnormalities are identified: cardiomegaly, edema and ..."."""
    return f"The following abnormalities are identified: {join_and(names)}." if names else NO_ABNORMALITY


def location_answer(name, boxes):
    return f"The {name} is located at the coordinates {format_boxes(boxes)} on the image."


def findings_answer(boxes_by_name):
    """{name: boxes} -> "There is an aortic enlargement located at the coordinates [..]; a ... [..] and [..]."."""
    if not boxes_by_name:
        return NO_ABNORMALITY
    parts = [f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name} located at the coordinates {format_boxes(boxes)}"
             for name, boxes in boxes_by_name.items()]
    return "There is " + "; ".join(parts) + "."


def phrase_answer(boxes):
    return f"This finding is located at {format_boxes(boxes)} in the image."


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")


def format_number(x):
    """0.5 -> '0.5', 0.123 -> '0.12', 1 -> '1.0' (2 decimals, trailing zeros dropped, as in the paper)."""
    s = f"{round(float(x), 2):.2f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def format_box(box):
    return "[" + ", ".join(format_number(v) for v in box) + "]"


def format_boxes(boxes):
    """[[..], [..], [..]] -> '[..], [..] and [..]'."""
    texts = [format_box(b) for b in boxes]
    if len(texts) <= 1:
        return "".join(texts)
    return ", ".join(texts[:-1]) + " and " + texts[-1]


def parse_boxes(text):
    """Every `[a, b, c, d]` of floats in `text`, in order, non-finite ones dropped."""
    boxes = []
    for match in _BOX_RE.finditer(text):
        box = [float(v) for v in match.groups()]
        if all(math.isfinite(v) for v in box):
            boxes.append(box)
    return boxes


def box_is_valid(box):
    """A normalized box: four finite numbers in [0, 1] with x_min < x_max and y_min < y_max."""
    return (len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in box)
            and box[0] < box[2] and box[1] < box[3])


def box_iou(a, b):
    """IoU of two [x0, y0, x1, y1] boxes; an inverted or empty box has area 0, so IoU 0 (never NaN)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    iou = inter / union if union > 0 else 0.0
    return iou if 0.0 <= iou <= 1.0 else 0.0  # huge coordinates can overflow to inf/inf = nan


def has_image(record):
    return bool(record.get("image")) or record.get("image_array") is not None


class RecordError(ValueError):
    """A record that cannot be used; the message names the record and the problem."""


def record_id(record, index=None):
    rid = record.get("id") if isinstance(record, dict) else None
    return str(rid) if rid is not None else f"#{index}"


def task_of(record):
    """A record's task; a record without one (plain LLaVA data) counts as a report."""
    return record.get("task") or "report"


def validate_record(record, index=None):
    """Raise RecordError naming the record if it is not a usable RadVLM/LLaVA record."""
    rid = record_id(record, index)
    if not isinstance(record, dict):
        raise RecordError(f"record {rid}: not a JSON object")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise RecordError(f"record {rid}: 'conversations' must be a list of at least 2 turns")
    for i, turn in enumerate(turns):
        if (not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt")
                or not isinstance(turn.get("value"), str)):
            raise RecordError(f"record {rid}: turn {i} must be {{'from': 'human'|'gpt', 'value': str}}")
        if turn["from"] != ("human" if i % 2 == 0 else "gpt"):
            raise RecordError(f"record {rid}: turn {i} should be from {'human' if i % 2 == 0 else 'gpt'}")
    n_image_tags = sum(t["value"].count("<image>") for t in turns)
    if record.get("image"):
        if n_image_tags != 1 or "<image>" not in turns[0]["value"]:
            raise RecordError(f"record {rid}: an image record needs exactly one <image> in the first human turn")
    elif n_image_tags:
        raise RecordError(f"record {rid}: has <image> in its text but no 'image' field")
    task = record.get("task")
    if task is not None and task not in TASKS + GENERAL_TASKS:
        raise RecordError(f"record {rid}: unknown task {task!r} (known: {', '.join(TASKS + GENERAL_TASKS)})")
    for box in record.get("boxes") or []:
        if not (isinstance(box, (list, tuple)) and box_is_valid(list(box))):
            raise RecordError(f"record {rid}: malformed box {box!r} (want [x_min, y_min, x_max, y_max] in 0-1)")
    return record


def image_path(record, index=None):
    """The path of the record's image file; RecordError naming the record if it has none or the file is not there."""
    rid = record_id(record, index)
    path = record.get("image")
    if not path:
        raise RecordError(f"record {rid}: has no image")
    if not os.path.exists(path):
        raise RecordError(f"record {rid}: image file not found: {path}")
    return path


_BRACKETS_RE = re.compile(r"\[[^\[\]]*\]")


def check_gold_answer(record, index=None, scored=False):
    """Raise RecordError naming the record if its gold answer (the last turn) can be neither learned from nor scored:
    none, empty, or, in a grounding task, holding a bracketed box that is not four numbers in [0, 1]. Where answers
    are `scored` against it (GRPO's rewards, evaluation, the cold start's trace filter), a grounding gold answer must
    hold a box at all: against none every answer scores 0, a prompt that teaches nothing, a test that tells nothing."""
    rid = record_id(record, index)
    if record["conversations"][-1]["from"] != "gpt":
        raise RecordError(f"record {rid}: ends with a question, not with its answer")
    gold = reference_answer(record)
    if not gold.strip():
        raise RecordError(f"record {rid}: empty gold answer")
    if task_of(record) in GROUNDING_TASKS:
        for text in _BRACKETS_RE.findall(gold):
            boxes = parse_boxes(text)
            if len(boxes) != 1 or not box_is_valid(boxes[0]):
                raise RecordError(f"record {rid}: gold box {text} is not a box in [0, 1]")
        if scored and not parse_boxes(gold):
            raise RecordError(f"record {rid}: gold answer holds no box, so every answer would score 0")


def check_record(record, index=None, scored=False):
    """Raise RecordError naming the record if it cannot be used: malformed (validate_record), its image file missing
    (image_path) or its gold answer unusable (check_gold_answer). What only reading the image can tell (a corrupt
    file, too many tokens) is found when the record is tokenized."""
    validate_record(record, index)
    check_gold_answer(record, index, scored)
    if record.get("image"):
        image_path(record, index)


def load_records(path):
    """Records from a .json (list) or .jsonl file; relative image paths resolve against the file's folder."""
    with open(path) as f:
        if path.endswith(".jsonl"):
            records = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise RecordError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        else:
            records = json.load(f)
    if not isinstance(records, list):
        raise RecordError(f"{path}: expected a JSON list of records")
    root = os.path.dirname(os.path.abspath(path))
    for i, record in enumerate(records):
        if isinstance(record, dict) and record.get("image") and not os.path.isabs(record["image"]):
            record["image"] = os.path.join(root, record["image"])
    return records

def save_records(records, path):
    """Records as JSONL, written atomically; in-memory images (synthetic "image_array") are not saved."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps({k: v for k, v in record.items() if k != "image_array"}) + "\n")
    os.replace(tmp, path)


def make_record(rid, image, question, answer, task, **ground_truth):
    """A single-turn record in the project's format; `ground_truth` (boxes, labels, ...) kept as fields."""
    question = ("<image>\n" + question) if image else question
    record = {"id": rid, "image": image, "task": task,
              "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    record.update(ground_truth)
    return record

def reference_answer(record):
    return record["conversations"][-1]["value"]


def question(record):
    """The last question asked, without its image slot."""
    return [t["value"] for t in record["conversations"] if t["from"] == "human"][-1].replace("<image>", "").strip()
