"""The general world (shapes.py): deterministic scenes, boxes on what was drawn, records in the chest X-ray tasks'
answer formats, and sft.py trains on it."""
import numpy as np

import shapes
from records import GENERAL_TASKS, box_is_valid, parse_boxes, reference_answer, validate_record


def test_scenes_are_deterministic_and_boxes_hold_what_was_drawn():
    assert np.array_equal(shapes.generate_scene(3)["image"], shapes.generate_scene(3)["image"])
    for seed in range(40):
        scene = shapes.generate_scene(seed)
        background = np.median(scene["image"])
        assert 1 <= len(scene["objects"]) <= 4 and len({o["shape"] for o in scene["objects"]}) == len(scene["objects"])
        for obj in scene["objects"]:
            assert box_is_valid(obj["box"])
            x0, y0, x1, y1 = (round(v * 128) for v in obj["box"])
            inside = scene["image"][y0:y1, x0:x1].astype(float)
            assert np.abs(inside - background).max() > 60  # a bright or dark object on the mid-gray background


def test_records_use_the_answer_formats_and_parse_back():
    split = shapes.ShapeRecords("train", 60)
    seen = set()
    for i in range(60):
        record = split[i]
        validate_record(record)
        seen.add(record["task"])
        boxes = parse_boxes(reference_answer(record))
        if record["task"] == "caption":
            assert not boxes and reference_answer(record).startswith("A ")
        else:
            assert boxes == record["boxes"]
        if record["task"] == "object_grounding":
            assert reference_answer(record).endswith("on the image.") and " is located at the coordinates [" in \
                reference_answer(record)
    assert seen == set(GENERAL_TASKS) | {"phrase_grounding"}
    assert shapes.ShapeRecords("test", 3)[0]["conversations"] != shapes.ShapeRecords("train", 3)[0]["conversations"]
