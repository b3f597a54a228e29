import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import write_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sft(out_dir, ckpt, data, *args, nproc=1, check=True):
    cmd = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                f"--nproc_per_node={nproc}"]
    cmd += [os.path.join(ROOT, "sft.py"), f"--init_from={ckpt}", f"--data={data}", f"--val_data={data}",
            f"--out_dir={out_dir}", "--max_tokens=512", "--num_workers=0", "--lr=1e-3", "--vision_lr=1e-3",
            "--eval_every=2", "--epochs=50", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def losses(out_dir):
    return {r["step"]: r for r in map(json.loads, open(os.path.join(out_dir, "log.jsonl"))) if "loss" in r}


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    return write_records(str(tmp_path_factory.mktemp("data")), 16, bad=True)


@pytest.fixture(scope="module")
def full_run(tiny_checkpoint, records_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "full")
    # two background workers here, none in the resumed run: the stream must not depend on it
    proc = run_sft(out, tiny_checkpoint, records_file, "--max_steps=4", "--save_every=2", "--rows_per_step=2",
                   "--window=4", "--num_workers=2")
    open(os.path.join(out, "stdout.txt"), "w").write(proc.stdout)
    return out


def test_sft_trains_logs_skips_bad_records_and_saves_a_loadable_model(full_run):
    import torch
    from transformers import AutoModelForImageTextToText
    log = losses(full_run)
    assert sorted(log) == [1, 2, 3, 4]
    assert log[4]["loss"] < log[1]["loss"]
    assert all(k in log[1] for k in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s"))
    assert "val_loss" in log[2] and "val_loss" in log[4]
    # the record with a missing image and the one without an answer, once per epoch they are met in
    assert log[4]["skipped"] >= 2
    stdout = open(os.path.join(full_run, "stdout.txt")).read()
    assert "skipped record missing-image: image file not found" in stdout
    assert "skipped record no-answer: 'conversations' must be a list of at least 2 turns" in stdout
    latest = os.path.join(full_run, open(os.path.join(full_run, "latest")).read())
    model = AutoModelForImageTextToText.from_pretrained(latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_strict_mode_stops_on_the_bad_record(tiny_checkpoint, records_file, tmp_path):
    proc = run_sft(str(tmp_path / "strict"), tiny_checkpoint, records_file, "--max_steps=2", "--strict=True",
                   "--window=16", check=False)
    assert proc.returncode != 0
    assert ("RecordError: record missing-image: image file not found" in proc.stderr
            or "RecordError: record no-answer: 'conversations' must be a list" in proc.stderr)


def test_resume_is_exact(full_run, tiny_checkpoint, records_file, tmp_path):
    # the state of the output folder of a run killed right after its step-2 checkpoint
    crashed = str(tmp_path / "crashed")
    shutil.copytree(full_run, crashed)
    shutil.rmtree(os.path.join(crashed, "step_0000004"))
    with open(os.path.join(crashed, "latest"), "w") as f:
        f.write("step_0000002")
    lines = [line for line in open(os.path.join(crashed, "log.jsonl")) if json.loads(line)["step"] <= 2]
    open(os.path.join(crashed, "log.jsonl"), "w").write("".join(lines))
    run_sft(crashed, tiny_checkpoint, records_file, "--max_steps=4", "--save_every=2", "--rows_per_step=2",
            "--window=4", "--resume=True")
    full, resumed = losses(full_run), losses(crashed)
    for step in (3, 4):
        assert abs(full[step]["loss"] - resumed[step]["loss"]) <= 1e-6
        assert abs(full[step]["grad_norm"] - resumed[step]["grad_norm"]) <= 1e-5


def test_two_process_run_equals_one_process(tiny_checkpoint, tmp_path):
    data = write_records(str(tmp_path / "data"), 12)
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    common = ["--max_steps=3", "--window=1", "--save_every=100", "--val_data="]
    run_sft(one, tiny_checkpoint, data, "--rows_per_step=2", *common)
    run_sft(two, tiny_checkpoint, data, "--rows_per_step=1", *common, nproc=2)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step]["loss"] - b[step]["loss"]) <= 1e-5
        assert a[step]["tokens"] == b[step]["tokens"]


def test_interrupted_checkpoint_leaves_the_previous_one_latest(tiny_checkpoint, tmp_path, monkeypatch):
    import torch
    from model import latest_checkpoint, load_model, load_training_checkpoint, save_training_checkpoint
    model, processor = load_model(tiny_checkpoint, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = str(tmp_path / "run")
    os.makedirs(out)
    save_training_checkpoint(out, 1, model, optimizer, processor, {"step": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(type(processor), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        save_training_checkpoint(out, 2, model, optimizer, processor, {"step": 2})
    assert latest_checkpoint(out).endswith("step_0000001")
    monkeypatch.undo()
    assert load_training_checkpoint(latest_checkpoint(out), model, optimizer)["step"] == 1
    load_model(latest_checkpoint(out), device="cpu")
