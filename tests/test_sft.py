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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
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
    # the record whose image cannot be read, once per epoch it is met in; those with a missing image or no answer are
    # skipped when the file is read
    assert log[4]["skipped"] >= 1
    stdout = open(os.path.join(full_run, "stdout.txt")).read()
    assert "skipped 2 of 19 records" in stdout
    assert "skipped record missing-image: image file not found" in stdout
    assert "skipped record no-answer: 'conversations' must be a list of at least 2 turns" in stdout
    assert "skipped record unreadable-image: cannot read image" in stdout
    latest = os.path.join(full_run, open(os.path.join(full_run, "latest")).read())
    model = AutoModelForImageTextToText.from_pretrained(latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_strict_mode_stops_on_the_bad_record(tiny_checkpoint, records_file, tmp_path):
    proc = run_sft(str(tmp_path / "strict"), tiny_checkpoint, records_file, "--max_steps=2", "--strict=True",
                   "--window=16", check=False)
    assert proc.returncode != 0
    assert ("RecordError: record missing-image: image file not found" in proc.stderr
            or "RecordError: record no-answer: 'conversations' must be a list" in proc.stderr)


def test_a_task_mix_reaches_the_training_records(tiny_checkpoint, records_file, tmp_path):
    """--mix weighs the synthetic world's tasks; given a file it stops before the model loads, naming the problem, which
    it can only do if sft.py hands --mix to open_records (read and then dropped, the run would train)."""
    proc = run_sft(str(tmp_path / "mix"), tiny_checkpoint, records_file, "--max_steps=1", "--mix=report=1", check=False)
    assert proc.returncode != 0 and "applies to the synthetic world" in proc.stderr


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


def test_a_resumed_run_honours_a_new_length_and_refuses_what_the_checkpoint_holds(full_run, tiny_checkpoint,
                                                                                   records_file, tmp_path):
    """Resuming the finished 4-step run with --max_steps=6 trains steps 5 and 6 on the schedule of a 6-step run, and
    says so; it printed "done: 4 steps" before, the checkpoint's length winning without a word. A changed learning
    rate, which the optimizer's restored state would silently override, stops the run and names it."""
    extended = str(tmp_path / "extended")
    shutil.copytree(full_run, extended)
    args = ["--save_every=2", "--rows_per_step=2", "--window=4", "--resume=True"]
    proc = run_sft(extended, tiny_checkpoint, records_file, "--max_steps=6", *args)
    assert "max_steps 4 -> 6" in proc.stdout and "goes on to step 6" in proc.stdout and "done: 6 steps" in proc.stdout
    log = losses(extended)
    assert sorted(log) == [1, 2, 3, 4, 5, 6] and log[4] == losses(full_run)[4]
    assert log[5]["lr"] > log[4]["lr"]  # a 6-step schedule, not the 4-step one's floor
    refused = run_sft(extended, tiny_checkpoint, records_file, "--max_steps=6", "--lr=5e-4", *args, check=False)
    assert refused.returncode != 0 and "this run changes lr=0.0005 (the checkpoint's: 0.001)" in refused.stderr


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
        assert abs(a[step]["grad_norm"] - b[step]["grad_norm"]) <= 1e-5  # before clipping: a wrong scale shows


def test_interrupted_checkpoint_leaves_the_previous_one_latest(tiny_checkpoint, tmp_path, monkeypatch):
    import torch
    from checkpoints import latest_checkpoint, load_training_checkpoint, save_training_checkpoint
    from model import load_model
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


# ---------------------------------------------------------------------------------------------------
# the optimizer: schedule, parameter groups, frozen vision, where a run ends

def optimizer_groups(checkpoint):
    """The AdamW parameter groups stored in a training checkpoint: [(settings, parameter names)]."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(os.path.join(checkpoint, "train_state"), checkpoint + ".pt")
    groups = torch.load(checkpoint + ".pt", weights_only=False)["optimizer"]["param_groups"]
    return [({k: v for k, v in g.items() if k != "params"}, g["params"]) for g in groups]


def test_schedule_and_parameter_groups(tiny_checkpoint, records_file, tmp_path):
    """Warm-up over the first 25 % of 8 steps, then cosine to 10 % of the peak; the vision tower (with its mergers)
    at its own rate; no weight decay on norms and biases."""
    import math
    out = str(tmp_path / "run")
    run_sft(out, tiny_checkpoint, records_file, "--lr=1e-3", "--vision_lr=2e-4", "--warmup=0.25", "--max_steps=8",
            "--save_every=4", "--rows_per_step=1", "--window=4", "--weight_decay=0.1")
    log = losses(out)
    for step in range(1, 9):  # the learning rate each step used, written out by hand
        it = step - 1
        factor = (it + 1) / 2 if it < 2 else 0.1 + 0.45 * (1 + math.cos(math.pi * (it - 2) / 6))
        assert log[step]["lr"] == pytest.approx(1e-3 * factor)
        assert log[step]["lr_vision"] == pytest.approx(2e-4 * factor)
    groups = optimizer_groups(os.path.join(out, "step_0000008"))
    names = [n for _, ps in groups for n in ps]
    assert len(names) == len(set(names))
    for settings, params in groups:
        vision = all(n.startswith("model.visual.") for n in params)
        assert vision or not any(n.startswith("model.visual.") for n in params)
        assert settings["base_lr"] == (2e-4 if vision else 1e-3)
        vector = [n.endswith(("bias", "norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight"))
                  for n in params]
        assert all(vector) or not any(vector), params  # norms and biases never share a group with the matrices
        assert settings["weight_decay"] == (0.0 if all(vector) else 0.1), params
    assert sorted(settings["weight_decay"] for settings, _ in groups) == [0.0, 0.0, 0.1, 0.1]  # text, vision


def test_the_schedule_ends_with_the_epochs_when_they_end_before_max_steps(tiny_checkpoint, tmp_path):
    """The cold start's config says 400 steps but its traces last one epoch (~64 steps): the cosine must reach its
    floor at the last step the data gives, not stop near the peak (which left the cold-start model unconverged)."""
    data = write_records(str(tmp_path / "data"), 24)
    out = str(tmp_path / "run")
    run_sft(out, tiny_checkpoint, data, "--epochs=2", "--max_steps=400", "--warmup=0.1", "--rows_per_step=1",
            "--window=8", "--eval_every=0", "--save_every=0")
    log = [row for _, row in sorted(losses(out).items())]
    assert 4 <= len(log) < 40
    assert log[-1]["lr"] < 0.2e-3 and max(row["lr"] for row in log) == pytest.approx(1e-3, rel=0.05)


def test_freeze_vision_leaves_the_tower_alone(tiny_checkpoint, records_file, tmp_path):
    import torch
    from safetensors.torch import load_file
    out = str(tmp_path / "frozen")
    run_sft(out, tiny_checkpoint, records_file, "--freeze_vision=True", "--max_steps=2", "--save_every=2",
            "--rows_per_step=1", "--window=4")
    before, after = (load_file(os.path.join(p, "model.safetensors")) for p in (tiny_checkpoint,
                                                                              os.path.join(out, "step_0000002")))
    visual = [k for k in before if k.startswith("model.visual.")]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in visual)
    assert not any(n.startswith("model.visual.") for _, ps in optimizer_groups(os.path.join(out, "step_0000002"))
                   for n in ps)


def test_one_epoch_stops_at_the_end_of_the_data(tiny, tiny_checkpoint, records_file, tmp_path):
    """max_steps=0 trains for `epochs` (here 1): as many steps as whole batches of rows the data packs into. The
    number of steps is estimated from the first window: with a bad record there it overshoots, and the end of the
    data must stop the run; where every window packs alike it is exact, and the schedule ends at the last step."""
    from conftest import write_records
    from data import PackedWindows, open_records
    model, processor = tiny
    clean_file = write_records(str(tmp_path / "clean"), 16)
    for name, data in (("bad", records_file), ("clean", clean_file)):
        stream = PackedWindows(open_records(data), processor, model, 512, window=4)  # the records sft.py trains on
        windows = iter(stream)
        n_rows = sum(len(next(windows)["rows"]) for _ in range(stream.n_windows))  # one epoch
        out = str(tmp_path / name)
        run_sft(out, tiny_checkpoint, data, "--max_steps=0", "--epochs=1", "--rows_per_step=2", "--window=4",
                "--save_every=1000")
        assert max(losses(out)) == n_rows // 2, name
        state = json.load(open(os.path.join(out, f"step_{n_rows // 2:07d}", "train_state.json")))  # saved at the end
        assert state["cursor"] == [1, 0, 0], name  # the next row would be the second epoch's first
        if name == "clean":
            assert state["total_steps"] == n_rows // 2


def test_resume_inside_a_window_is_exact(tiny_checkpoint, records_file, tmp_path):
    """128-token rows hold about two samples, so a window of 8 records packs into several rows and a checkpoint
    after one row lands inside the window: the resumed run must skip exactly the rows already trained on."""
    full = str(tmp_path / "full")
    common = ["--max_tokens=256", "--rows_per_step=1", "--window=8", "--max_steps=5", "--save_every=1", "--keep_last=5"]
    run_sft(full, tiny_checkpoint, records_file, *common)
    state = json.load(open(os.path.join(full, "step_0000005", "train_state.json")))
    crashed = str(tmp_path / "crashed")
    shutil.copytree(full, crashed)
    step = next(s for s in (3, 4) if json.load(open(os.path.join(full, f"step_{s:07d}", "train_state.json")))
                ["cursor"][2] > 0)  # a checkpoint in the middle of a window
    for later in range(step + 1, 6):
        shutil.rmtree(os.path.join(crashed, f"step_{later:07d}"), ignore_errors=True)
    open(os.path.join(crashed, "latest"), "w").write(f"step_{step:07d}")
    lines = [line for line in open(os.path.join(crashed, "log.jsonl")) if json.loads(line)["step"] <= step]
    open(os.path.join(crashed, "log.jsonl"), "w").write("".join(lines))
    run_sft(crashed, tiny_checkpoint, records_file, *common, "--resume=True")
    a, b = losses(full), losses(crashed)
    for s in range(step + 1, 6):
        assert abs(a[s]["loss"] - b[s]["loss"]) <= 1e-6 and a[s]["tokens"] == b[s]["tokens"]
    assert json.load(open(os.path.join(crashed, "step_0000005", "train_state.json")))["cursor"] == state["cursor"]


def test_a_checkpoint_restores_the_random_state(tiny, tmp_path):
    import torch
    from checkpoints import load_training_checkpoint, save_training_checkpoint
    model, processor = tiny
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    os.makedirs(tmp_path / "run")
    torch.manual_seed(7)
    path = save_training_checkpoint(str(tmp_path / "run"), 1, model, optimizer, processor, {"step": 1})
    expected = torch.rand(4)
    torch.manual_seed(8)
    load_training_checkpoint(path, model, optimizer)
    assert torch.equal(torch.rand(4), expected)
