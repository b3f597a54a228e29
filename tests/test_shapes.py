"""The general world (shapes.py): deterministic scenes, boxes on what was drawn, records in the chest X-ray tasks'
answer formats, and sft.py trains on it."""
import numpy as np

import shapes
import synthetic
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
        if record["task"] in ("caption", "radiograph_caption"):
            assert not boxes and reference_answer(record)[0] in "AC"
        else:
            assert boxes == record["boxes"]
        if record["task"] == "object_grounding":
            assert reference_answer(record).endswith("on the image.") and " is located at the coordinates [" in \
                reference_answer(record)
    assert seen == set(GENERAL_TASKS) | {"phrase_grounding"}
    assert shapes.ShapeRecords("test", 3)[0]["conversations"] != shapes.ShapeRecords("train", 3)[0]["conversations"]


def test_one_record_in_ten_is_a_captioned_radiograph_of_studies_sft_never_trains_on():
    """The general world's radiographs: about 10 % of its records, each a synthetic.py study's image from far into its
    split (a study of the first million is one SFT may train on: an offset forgotten fails it), captioned as the web
    does (what it shows, by name and side, half the time), never a report sentence or a box."""
    split = shapes.ShapeRecords("train", 1000)
    radiographs = [split[i] for i in range(1000) if split[i]["task"] == "radiograph_caption"]
    assert 70 <= len(radiographs) <= 130
    named = 0
    for record in radiographs:
        study_seed = int(record["id"].rsplit("-", 1)[1])
        study = synthetic.generate_study(study_seed)
        assert study_seed >= synthetic.SPLIT_OFFSET["train"] + 1_000_000
        assert np.array_equal(record["image_array"], study["image"])
        caption = reference_answer(record)
        assert not parse_boxes(caption) and caption not in study["report"]
        if caption.startswith("A chest X-ray showing"):
            named += 1
            for finding in study["findings"]:
                assert finding["name"] in caption and finding["attrs"].get("side", "") in caption
    assert 0.3 <= named / len(radiographs) <= 0.7
    val = shapes.ShapeRecords("val", 300)
    assert all(int(r["id"].rsplit("-", 1)[1]) >= synthetic.SPLIT_OFFSET["val"] + 1_000_000
               for r in (val[i] for i in range(300)) if r["task"] == "radiograph_caption")
