"""Shared fixtures: a tiny Qwen3-VL saved in the real checkpoint layout and loaded back like a real one."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)  # tests share 2 cores; keep torch from oversubscribing them


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a tiny random Qwen3-VL saved by save_checkpoint (safetensors, configs, processor files)."""
    from checkpoints import save_checkpoint
    from model import build_tiny
    model, processor = build_tiny(seed=0)
    return save_checkpoint(model, processor, str(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint):
    """(model, processor) loaded from the tiny checkpoint through load_model, as a real checkpoint would be."""
    from model import load_model
    model, processor = load_model(tiny_checkpoint, device="cpu")
    return model.eval(), processor


def favour_eos(model, processor, bias=4.0):
    """A forward hook that adds `bias` to the EOS logit (<|im_end|>): the tiny random model then ends some answers
    after a few tokens and others not at all. Returns the hook's handle (remove it after)."""
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    return model.lm_head.register_forward_hook(
        lambda module, inputs, logits: logits + bias * torch.nn.functional.one_hot(torch.tensor(eos), logits.shape[-1]))


def gray_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")


REPORTS = ["No acute cardiopulmonary process.", "Small left pleural effusion.", "Moderate cardiomegaly.",
           "Right lower lobe consolidation.", "Mild pulmonary edema.", "The lungs are clear."]


def write_records(folder, n, bad=False):
    """n small report/grounding records with PNG images in `folder`/records.jsonl (plus three bad ones: an image
    that is missing, one that cannot be read, no answer)."""
    import json
    import os
    os.makedirs(folder, exist_ok=True)
    records = []
    for i in range(n):
        w, h = [(64, 64), (96, 64), (64, 96), (128, 96)][i % 4]
        gray_image(w, h, seed=i).save(os.path.join(folder, f"{i}.png"))
        if i % 3 == 2:
            box = [round(0.1 + 0.02 * (i % 10), 2), 0.2, 0.6, round(0.7 + 0.01 * (i % 5), 2)]
            records.append({"id": f"g{i}", "image": f"{i}.png", "task": "anatomical_grounding", "boxes": [box],
                            "conversations": [{"from": "human", "value": "<image>\nWhere is the heart?"},
                                              {"from": "gpt", "value": f"The heart is located at the coordinates "
                                               f"[{box[0]}, 0.2, 0.6, {box[3]}] on the image."}]})
        else:
            records.append({"id": f"r{i}", "image": f"{i}.png", "task": "report",
                            "conversations": [{"from": "human", "value": "<image>\nWrite a radiology report."},
                                              {"from": "gpt", "value": REPORTS[i % len(REPORTS)]}]})
    if bad:
        records.insert(3, {"id": "missing-image", "image": "nope.png", "conversations": records[0]["conversations"]})
        records.insert(7, {"id": "no-answer", "image": "0.png",
                           "conversations": [{"from": "human", "value": "<image>\nHi"}]})
        open(os.path.join(folder, "corrupt.png"), "wb").write(b"not a png")
        records.insert(11, {"id": "unreadable-image", "image": "corrupt.png",
                            "conversations": records[0]["conversations"]})
    path = os.path.join(folder, "records.jsonl")
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    return path


def weights_and_optimizer_after(start_checkpoint, out_dir):
    """What a run in out_dir changed: (names of the weights its latest checkpoint holds changed from start_checkpoint's,
    names of those it kept bit for bit, names of the parameters its optimizer holds: AdamW state or a group entry)."""
    import glob
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    latest = os.path.join(out_dir, open(os.path.join(out_dir, "latest")).read().strip())
    weights = [{k: v for f in glob.glob(os.path.join(folder, "*.safetensors")) for k, v in load_file(f).items()}
               for folder in (start_checkpoint, latest)]
    changed = {k for k, v in weights[0].items() if not torch.equal(v, weights[1][k])}
    dcp_to_torch_save(os.path.join(latest, "train_state"), os.path.join(out_dir, "train_state.pt"))
    optimizer = torch.load(os.path.join(out_dir, "train_state.pt"), weights_only=True)["optimizer"]
    held = set(optimizer["state"]) | {name for group in optimizer["param_groups"] for name in group["params"]}
    return changed, set(weights[0]) - changed, held


def wandb_history(out_dir):
    """(the history rows, the run's files folder) of the one offline W&B run under out_dir/wandb, read from its .wandb
    file: W&B's log format (a 7-byte header, then 32 KiB blocks of records, each a 7-byte header of CRC, length and
    kind, FULL / FIRST / MIDDLE / LAST, around protobuf bytes), its history records' items as JSON values."""
    import glob
    import json
    import struct
    from wandb.proto import wandb_internal_pb2
    runs = glob.glob(os.path.join(out_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, runs
    data, pos, pieces, history = open(runs[0], "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        pieces, pos = pieces + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            if record.WhichOneof("record_type") == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
    return history, os.path.join(os.path.dirname(runs[0]), "files")
