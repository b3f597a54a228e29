"""What the real path (8 GPUs, real checkpoints and data) needs that the synthetic default never meets: bf16 exports,
checkpoints with their own sampling settings, a teacher's pixel budget, and a data stream that does not go through
shared memory."""
import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from conftest import write_records
from data import generation_kwargs, PackedWindows, prompt_batch
from checkpoints import load_training_checkpoint, save_checkpoint, save_training_checkpoint
from model import build_tiny, load_model
from records import load_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkpoints_export_bf16_and_resume_from_fp32_master_weights(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText
    model, processor = build_tiny(seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = str(tmp_path / "run")
    os.makedirs(out)
    path = save_training_checkpoint(out, 1, model, optimizer, processor, {"step": 1}, dtype=torch.bfloat16)
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["dtype"] == "bfloat16"
    assert {config[part].get("dtype", "bfloat16") for part in ("text_config", "vision_config")} == {"bfloat16"}
    exported = AutoModelForImageTextToText.from_pretrained(path)
    assert exported.dtype == torch.bfloat16
    fresh, _ = build_tiny(seed=2)
    load_training_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters(), lr=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_a_checkpoints_own_sampling_settings_are_overridden(tmp_path, tiny_checkpoint):
    """Real checkpoints ship generation_config.json with top_k, top_p, temperature and penalties; GRPO's ratio
    and greedy evaluation assume the plain softmax, so loading drops them."""
    from engine import sample_rollouts
    hostile = str(tmp_path / "hostile")
    model, processor = load_model(tiny_checkpoint, device="cpu")
    save_checkpoint(model, processor, hostile)
    json.dump({"do_sample": True, "temperature": 0.2, "top_k": 3, "top_p": 0.3, "repetition_penalty": 3.0,
               "no_repeat_ngram_size": 1, "min_new_tokens": 5, "bad_words_ids": [[5], [6]],
               "eos_token_id": 0, "pad_token_id": 0}, open(os.path.join(hostile, "generation_config.json"), "w"))
    loaded, _ = load_model(hostile, device="cpu")
    records = [r for r in load_records(write_records(str(tmp_path / "data"), 4)) if r["task"] == "report"][:2]
    inputs = prompt_batch(records, processor)
    with torch.no_grad():
        greedy = [m.generate(**inputs, max_new_tokens=12, **generation_kwargs(processor.tokenizer))
                  for m in (model, loaded)]
    assert torch.equal(*greedy)
    sampled = []
    for m in (model, loaded):
        torch.manual_seed(0)
        sampled.append(sample_rollouts(m.eval(), processor, records, 4, False, torch.device("cpu"),
                                       max_new_tokens=12)[0].input_ids)
    assert torch.equal(*sampled)
    plain = model.generation_config
    assert (plain.top_k is None and plain.repetition_penalty is None
            and plain.eos_token_id == loaded.generation_config.eos_token_id)


def test_the_teacher_sees_images_within_its_pixel_budget(tmp_path, tiny_checkpoint):
    """A native-resolution radiograph would be thousands of visual tokens; the teacher reads it at its budget
    (here a 512 x 512 image: 256 visual tokens at the default, 16 at a 16,384-pixel budget). A random teacher's
    traces are all dropped, which stops the run with a clear error."""
    Image.fromarray(np.full((512, 512), 128, np.uint8)).save(tmp_path / "big.png")
    record = {"id": "big", "image": "big.png", "task": "report",
              "conversations": [{"from": "human", "value": "<image>\nWrite a radiology report."},
                                {"from": "gpt", "value": "The lungs are clear."}]}
    (tmp_path / "records.jsonl").write_text(json.dumps(record) + "\n")
    tokens = {}
    for budget in (451584, 16384):
        out = tmp_path / f"cold{budget}"
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "coldstart.py"), f"--teacher={tiny_checkpoint}",
                               f"--data={tmp_path / 'records.jsonl'}", f"--out_dir={out}",
                               f"--teacher_max_pixels={budget}", "--teacher_max_new_tokens=2"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode != 0 and "no trace was kept" in proc.stderr and "Traceback" not in proc.stderr
        line, = [json.loads(line) for line in open(out / "traces.rank0.jsonl")]
        assert line["reason"] in ("no trace", "too short")  # two tokens of a random model: empty or one word
        tokens[budget] = line["prompt_tokens"]
    assert tokens[451584] - tokens[16384] == 256 - 16


def test_the_training_stream_builds_windows_in_threads_without_shared_memory(tiny, tmp_path):
    """Worker processes would hand every window's pixel values over through /dev/shm (64 MB in a container; one
    window of the paper's settings holds ~1.6 GB). Background threads build the same windows in the same order."""
    model, processor = tiny
    records = load_records(write_records(str(tmp_path / "data"), 24))
    streams = {n: iter(PackedWindows(records, processor, model, 512, window=4, num_workers=n)) for n in (0, 1, 3)}
    for _ in range(8):  # two epochs of 6 windows... and a bit more
        windows = {n: next(s) for n, s in streams.items()}
        for n in (1, 3):
            assert (windows[n]["epoch"], windows[n]["window"]) == (windows[0]["epoch"], windows[0]["window"])
            for a, b in zip(windows[n]["rows"], windows[0]["rows"]):
                assert a["ids"] == b["ids"] and torch.equal(a["input_ids"], b["input_ids"])
                assert torch.equal(a["pixel_values"], b["pixel_values"]) and not a["pixel_values"].is_shared()
