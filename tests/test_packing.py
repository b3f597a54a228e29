import numpy as np
import pytest
import torch

from conftest import gray_image
from data import image_filler, model_inputs, pack_samples, tokenize_sample
from records import RecordError, make_record


def _records(tmp_path):
    sizes = [(128, 128), (96, 160), (64, 64), (160, 96)]
    records = []
    for i, (w, h) in enumerate(sizes):
        path = str(tmp_path / f"img{i}.png")
        gray_image(w, h, seed=i).save(path)
        records.append(make_record(f"r{i}", path, "Write a radiology report for this Chest X-ray.",
                                   ["No acute findings.", "Small left pleural effusion.", "Moderate cardiomegaly.",
                                    "The right lung is located at the coordinates [0.12, 0.2, 0.48, 0.81]."][i],
                                   "report"))
    records.append({"id": "text-only", "conversations": [
        {"from": "human", "value": "What does cardiomegaly mean?"}, {"from": "gpt", "value": "An enlarged heart."}]})
    return records


def _separate_logits(model, sample):
    kw = {k: sample[k][None] for k in ("input_ids", "mm_token_type_ids")}
    if "pixel_values" in sample:
        kw.update(pixel_values=sample["pixel_values"], image_grid_thw=sample["image_grid_thw"])
    with torch.no_grad():
        return model(**kw, use_cache=False).logits[0]


def _packed_vs_separate(model, samples, row, call):
    with torch.no_grad():
        packed = model(**call(row)).logits[0]
    start, worst = 0, 0.0
    for sample in samples:
        n = len(sample["input_ids"])
        worst = max(worst, (packed[start:start + n] - _separate_logits(model, sample)).abs().max().item())
        start += n
    return worst


def test_packed_logits_equal_separate_logits(tiny, tmp_path):
    model, processor = tiny
    samples = [tokenize_sample(r, processor) for r in _records(tmp_path)]
    rows, too_long = pack_samples(samples, model, max_tokens=10_000)
    assert len(rows) == 1 and not too_long
    row = rows[0]
    order = [next(s for s in samples if s["id"] == rid) for rid in row["ids"]]
    assert row["position_ids"].shape == (4, 1, row["input_ids"].shape[1])
    assert _packed_vs_separate(model, order, row, model_inputs) <= 1e-4
    # the silent failures of packing with M-RoPE are caught by the same comparison
    with_cache = lambda r: model_inputs(r) | {"use_cache": True}  # noqa: E731
    assert _packed_vs_separate(model, order, row, with_cache) > 1e-2
    plain_ids = lambda r: model_inputs(r) | {"position_ids": r["position_ids"][0:1].expand(3, -1, -1)}  # noqa: E731
    assert _packed_vs_separate(model, order, row, plain_ids) > 1e-2
    only_mrope = lambda r: model_inputs(r) | {"position_ids": r["position_ids"][1:]}  # noqa: E731
    assert _packed_vs_separate(model, order, row, only_mrope) > 1e-2


def test_labels_cover_exactly_the_answer_and_eos(tiny, tmp_path):
    _, processor = tiny
    record = _records(tmp_path)[1]
    sample = tokenize_sample(record, processor)
    learned = sample["input_ids"][sample["labels"] != -100]
    assert processor.tokenizer.decode(learned) == "Small left pleural effusion.<|im_end|>"
    multi = {"id": "m", "image": record["image"], "conversations": [
        {"from": "human", "value": "<image>\nIs there an effusion?"}, {"from": "gpt", "value": "Yes."},
        {"from": "human", "value": "Which side?"}, {"from": "gpt", "value": "<think>\nLeft base.\n</think>\n\nLeft."}]}
    sample = tokenize_sample(multi, processor)
    learned = processor.tokenizer.decode(sample["input_ids"][sample["labels"] != -100])
    assert learned == "Yes.<|im_end|><think>\nLeft base.\n</think>\n\nLeft.<|im_end|>"
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not ((sample["input_ids"] == image_id) & (sample["labels"] != -100)).any()


def test_first_label_of_each_packed_sample_is_masked(tiny, tmp_path):
    model, processor = tiny
    samples = [tokenize_sample(r, processor) for r in _records(tmp_path)]
    for s in samples:
        s["labels"] = s["input_ids"].clone()  # worst case: everything is a label
    row = pack_samples(samples, model, max_tokens=10_000)[0][0]
    starts = (row["position_ids"][0, 0] == 0).nonzero().flatten()
    assert len(starts) == len(samples) and (row["labels"][0, starts] == -100).all()


def test_over_long_samples_are_returned_not_cut(tiny, tmp_path):
    model, processor = tiny
    samples = [tokenize_sample(r, processor) for r in _records(tmp_path)]
    longest = max(len(s["input_ids"]) for s in samples)
    rows, too_long = pack_samples(samples, model, max_tokens=longest - 1)
    assert [s["id"] for s in too_long] == [s["id"] for s in samples if len(s["input_ids"]) == longest]
    assert sum(len(r["ids"]) for r in rows) == len(samples) - len(too_long)
    assert all(r["input_ids"].shape[1] <= longest - 1 for r in rows)
    with pytest.raises(RecordError, match=r"record r0: \d+ tokens is more than max_tokens=10"):
        tokenize_sample(_records(tmp_path)[0], processor, max_tokens=10)


def test_text_only_rows_get_an_image_filler(tiny, tmp_path):
    model, processor = tiny
    text_only = tokenize_sample(_records(tmp_path)[-1], processor)
    filler = image_filler(processor)
    rows, _ = pack_samples([text_only], model, max_tokens=1000, filler=filler)
    row = rows[0]
    assert "pixel_values" in row and row["ids"] == ["text-only"]
    assert (row["labels"][0, len(text_only["input_ids"]):] == -100).all()
    with torch.no_grad():
        packed = model(**model_inputs(row)).logits[0, :len(text_only["input_ids"])]
    assert (packed - _separate_logits(model, text_only)).abs().max() <= 1e-4


def test_bad_records_raise_errors_naming_the_record(tiny, tmp_path):
    _, processor = tiny
    good = _records(tmp_path)[0]
    missing = dict(good, id="gone", image=str(tmp_path / "nope.png"))
    with pytest.raises(RecordError, match="record gone: image file not found"):
        tokenize_sample(missing, processor)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(RecordError, match="record broken: cannot read image"):
        tokenize_sample(dict(good, id="broken", image=str(tmp_path / "broken.png")), processor)
    with pytest.raises(RecordError, match="record bad-turns: turn 1"):
        tokenize_sample({"id": "bad-turns", "conversations": [{"from": "human", "value": "hi"}, {"from": "x"}]},
                        processor)
    with pytest.raises(RecordError, match="record bad-box: malformed box"):
        tokenize_sample(dict(good, id="bad-box", boxes=[[0.5, 0.5, 0.2, 0.9]]), processor)
    with pytest.raises(RecordError, match="record bad-task: unknown task 'segmentation'"):
        tokenize_sample(dict(good, id="bad-task", task="segmentation"), processor)


def test_sixteen_bit_and_grayscale_images_become_rgb(tiny, tmp_path):
    from PIL import Image
    from data import load_image
    array16 = (np.linspace(0, 4095, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(array16).save(tmp_path / "x16.png")
    image = load_image({"id": "x", "image": str(tmp_path / "x16.png")})
    assert image.mode == "RGB" and np.asarray(image).max() == 255 and np.asarray(image).min() == 0
    image = load_image({"id": "y", "image_array": np.zeros((10, 12), np.uint8)})
    assert image.size == (12, 10) and image.mode == "RGB"
