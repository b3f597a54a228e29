"""Faults a lab meets, each tried on the stage scripts as a user would meet it: data that is all bad, too small or with
gold answers that cannot be scored, a setting of 0, a corrupt checkpoint, a rank killed mid-run, a kill -9 while a
checkpoint is written. The "Faults" table of docs/training.md lists them."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("tokens_per_s", "mfu")  # log values that measure the machine, not the run


def launch(script, *args, nproc=1, max_restarts=0):
    """A stage script as its own process group (1 process, or torchrun with nproc workers), output to pipes. Restarts
    need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as docs/training.md says (torchrun's store otherwise hands the
    restarted ranks the killed ones' addresses, and they hang or fail connecting: pytorch/pytorch#135712)."""
    cmd = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           **({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if max_restarts else {})}
    return subprocess.Popen(cmd + [os.path.join(ROOT, script), *args], cwd=ROOT, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def finish(proc, timeout=300):
    """(returncode, stdout, stderr) of a launched script; a script still running after `timeout` s is killed (with
    all it started) and reported as hung."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s: it hangs\n{out[-1500:]}\n{err[-1500:]}") from None
    return proc.returncode, out, err


def run(script, *args, timeout=300, **kwargs):
    return finish(launch(script, *args, **kwargs), timeout)


def log(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def children(pid):
    """The ids of the processes whose parent is `pid` (torchrun's workers), from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read() if entry.isdigit() else ""
        except OSError:  # it ended while we looked
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)


def wait_for(condition, proc, timeout=240, every=0.005):
    """Poll until condition() holds; fail if the process ends first or it takes longer than timeout."""
    end = time.time() + timeout
    while not condition():
        if proc.poll() is not None or time.time() > end:
            _, out, err = finish(proc)
            raise AssertionError(f"the awaited moment never came\n{out[-1500:]}\n{err[-2500:]}")
        time.sleep(every)


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    return write_records(str(tmp_path_factory.mktemp("faults_data")), 16)


SFT_ARGS = ["--max_tokens=512", "--rows_per_step=1", "--window=4", "--epochs=50", "--num_workers=0", "--lr=1e-3",
            "--vision_lr=1e-3"]
GRPO_ARGS = ["--task=both", "--prompts_per_step=2", "--group_size=3", "--mini_batch=2", "--micro_batch=3",
             "--max_new_tokens=8", "--lr=1e-3", "--eval_every=0"]


# ---------------------------------------------------------------------------------------------------
# data that cannot make progress

STAGES = {"sft.py": ["--val_data=", "--max_steps=2"], "grpo.py": ["--max_steps=1"],
          "evaluate.py": ["--max_new_tokens=4"], "coldstart.py": ["--generate_batch=4"]}


@pytest.mark.parametrize("script", list(STAGES))
def test_a_file_whose_images_are_all_missing_stops_every_stage_with_the_reasons(script, tiny_checkpoint, tmp_path):
    """Fault: every image path of a data file is wrong (the commonest first mistake with a converted dataset). sft.py
    printed "skipped record ..." for the same records forever; the other stages died on the first record met."""
    data = write_records(str(tmp_path), 12)
    for png in glob.glob(str(tmp_path / "*.png")):
        os.remove(png)
    model = "--teacher" if script == "coldstart.py" else "--init_from"
    code, out, err = run(script, f"{model}={tiny_checkpoint}", f"--data={data}", f"--out_dir={tmp_path / 'out'}",
                         *STAGES[script], timeout=90)
    assert code != 0 and "none of the" in err and "can be used" in err, err[-2000:]
    assert "record r0: image file not found" in err and "record r1: image file not found" in err


def test_an_empty_data_file_stops_with_a_message_naming_it(tiny_checkpoint, tmp_path):
    """Fault: a data file with no records at all (a conversion that wrote nothing). sft.py died in data.py with a
    ZeroDivisionError (divmod by 0 windows); every stage must say which file holds no records."""
    from data import open_records
    from records import RecordError
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match=f"{empty} holds no records"):
        open_records(str(empty), tasks=("report",))
    code, out, err = run("sft.py", f"--init_from={tiny_checkpoint}", f"--data={empty}", "--val_data=",
                         f"--out_dir={tmp_path / 'out'}", *SFT_ARGS, "--max_steps=2", timeout=90)
    assert code != 0 and f"{empty} holds no records" in err and "ZeroDivisionError" not in err, err[-2000:]


def test_sft_on_records_whose_images_are_all_unreadable_stops_after_one_pass(tiny_checkpoint, tmp_path):
    """Fault: every image file exists but none can be read; the stream met only bad records and sft.py looped over
    them without end, where it must stop after one pass over the data, counting them and naming the first few."""
    data = write_records(str(tmp_path), 12)
    for png in glob.glob(str(tmp_path / "*.png")):
        open(png, "wb").write(b"not a png")
    code, out, err = run("sft.py", f"--init_from={tiny_checkpoint}", f"--data={data}", "--val_data=",
                         f"--out_dir={tmp_path / 'out'}", *SFT_ARGS, "--max_steps=2", timeout=120)
    assert code != 0 and "no usable record in a whole pass" in err and "12 records skipped" in err, err[-2000:]
    assert "cannot read image" in err


def test_sft_on_data_that_fills_less_than_one_step_says_so_and_stops(tiny_checkpoint, tmp_path):
    """Fault: 12 records fill one packed row, fewer than the 4 rows a step needs; sft.py trained nothing and said
    "done: 0 steps" with exit code 0."""
    data = write_records(str(tmp_path), 12)
    code, out, err = run("sft.py", f"--init_from={tiny_checkpoint}", f"--data={data}", "--val_data=",
                         f"--out_dir={tmp_path / 'out'}", "--max_steps=2", "--num_workers=0")
    assert code != 0 and "done: 0 steps" not in out
    assert "fills fewer rows than one step needs" in err and "--rows_per_step=4" in err, err[-2000:]


def test_gold_answers_that_cannot_be_scored_are_skipped_by_id_when_a_file_is_loaded(tmp_path, capsys):
    """Fault: a gold box that does not parse or lies outside [0, 1], an empty gold answer, a grounding gold answer
    without a box (every sampled answer scores 0: a GRPO prompt that teaches nothing) were read without a word."""
    from data import open_records
    from records import RecordError
    good = json.loads(open(write_records(str(tmp_path), 3)).readline())  # r0, a report
    grounding = json.loads(open(write_records(str(tmp_path), 3)).readlines()[2])  # g2

    def with_answer(rid, record, answer):
        turns = [record["conversations"][0], {"from": "gpt", "value": answer}]
        return {**record, "id": rid, "conversations": turns, "boxes": []}
    records = [good, grounding, with_answer("empty", good, " "),
               with_answer("outside", grounding, "The heart is located at the coordinates [0.1, 0.2, 1.5, 0.9]."),
               with_answer("three", grounding, "The heart is located at the coordinates [0.1, 0.2, 0.9]."),
               with_answer("no-box", grounding, "The heart is not seen."),
               {"id": "one-turn", "conversations": good["conversations"][:1]}]
    path = str(tmp_path / "mixed.jsonl")
    open(path, "w").write("".join(json.dumps(r) + "\n" for r in records))
    trained = open_records(path)  # SFT: a grounding answer without a box is something to learn, not to score
    assert [r["id"] for r in trained] == ["r0", "g2", "no-box"]
    said = capsys.readouterr().out
    assert "skipped 4 of 7 records" in said
    for problem in ("record empty: empty gold answer", "record outside: gold box [0.1, 0.2, 1.5, 0.9] is not a box in "
                    "[0, 1]", "record three: gold box [0.1, 0.2, 0.9] is not a box in [0, 1]",
                    "record one-turn: 'conversations' must be a list of at least 2 turns"):
        assert problem in said, problem
    scored = open_records(path, scored=True)  # GRPO, evaluation and the cold start score answers against the gold
    assert [r["id"] for r in scored] == ["r0", "g2"]
    assert "record no-box: gold answer holds no box, so every answer would score 0" in capsys.readouterr().out
    with pytest.raises(RecordError, match="record empty: empty gold answer"):
        open_records(path, strict=True)
    bad = str(tmp_path / "bad.jsonl")
    open(bad, "w").write("".join(json.dumps(r) + "\n" for r in records[2:6]))
    with pytest.raises(RecordError, match="none of the 4 records of .*bad.jsonl can be used"):
        open_records(bad, scored=True)


# ---------------------------------------------------------------------------------------------------
# settings of 0

def test_sft_eval_every_and_save_every_0_mean_never(tiny_checkpoint, records_file, tmp_path):
    """Fault: sft.py --eval_every=0 --save_every=0 died of ZeroDivisionError, where grpo.py reads 0 as "never"."""
    out = str(tmp_path / "out")
    code, stdout, err = run("sft.py", f"--init_from={tiny_checkpoint}", f"--data={records_file}",
                            f"--val_data={records_file}", f"--out_dir={out}", *SFT_ARGS, "--max_steps=2",
                            "--eval_every=0", "--save_every=0")
    assert code == 0, err[-2000:]
    assert [r["step"] for r in log(out)] == [1, 2] and not any("val_loss" in r for r in log(out))
    assert not glob.glob(os.path.join(out, "step_*")) and "no checkpoint saved" in stdout


def test_grpo_max_steps_0_is_refused_and_grad_clip_0_is_off(tiny_checkpoint, records_file, tmp_path):
    """Faults: grpo.py --max_steps=0 trained nothing and said "done: 0 steps" (sft.py reads 0 as "until the data
    ends", which GRPO's endless prompts do not); grpo.py --grad_clip=0 scaled every gradient to 0, so the policy
    never moved (sft.py reads 0 as "no clipping")."""
    from safetensors.torch import load_file
    code, out, err = run("grpo.py", f"--init_from={tiny_checkpoint}", f"--data={records_file}", "--max_steps=0",
                         f"--out_dir={tmp_path / 'zero'}")
    assert code != 0 and "--max_steps=0" in err and "done" not in out, err[-2000:]
    # grpo.py's loop with a reward the random tiny model earns (tests/grpo_wiring_worker.py): a gradient to follow
    code, out, err = run("tests/grpo_wiring_worker.py", str(tmp_path / "steps.json"), f"--init_from={tiny_checkpoint}",
                         f"--data={records_file}", "--task=report", "--prompts_per_step=4", "--mini_batch=2",
                         "--group_size=4", "--max_new_tokens=10", "--max_steps=1", "--eval_every=0", "--save_every=1",
                         "--grad_clip=0", "--weight_decay=0", "--beta=0", f"--out_dir={tmp_path / 'noclip'}")
    assert code == 0, err[-2000:]
    before = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    after = load_file(os.path.join(tmp_path, "noclip", "step_0000001", "model.safetensors"))
    assert log(str(tmp_path / "noclip"))[0]["grad_norm"] > 0
    assert any((before[k] - after[k]).abs().max() > 1e-6 for k in before)


def test_generate_batch_0_means_all_at_once_in_evaluation_and_the_cold_start(tiny, tmp_path):
    """Fault: generate_batch=0 is "all prompts at once" in grpo.py, but evaluate.py and coldstart.py died of
    `range() arg 3 must not be zero`."""
    import torch
    import coldstart
    import evaluate
    import synthetic
    model, processor = tiny
    records = [synthetic.SyntheticRecords("test", 3, tasks=("report",))[i] for i in range(3)]
    answers = evaluate.generate_answers(model, processor, records, 0, False, 2, torch.device("cpu"), progress=False)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    teach = lambda batch: coldstart.teacher_outputs(batch, None, None, None, 128, 0, 5)  # noqa: E731
    written = coldstart.write_traces(records, str(tmp_path / "traces.jsonl"), teach, generate_batch=0, min_words=5,
                                     min_score=0.5)
    assert written == 3 and len(open(tmp_path / "traces.jsonl").readlines()) == 3


# ---------------------------------------------------------------------------------------------------
# checkpoints: corrupt, killed while written, a rank lost mid-run

def test_resume_from_a_corrupt_checkpoint_names_it_and_falls_back_to_the_one_before(tiny_checkpoint, records_file,
                                                                                    tmp_path):
    """Fault: the training state (.distcp) of the latest checkpoint was truncated (a disk fault, a copy cut short);
    --resume=True died of a bare EOFError deep in torch.distributed.checkpoint, naming no checkpoint, where the
    intact checkpoint one save earlier was there to resume from."""
    import shutil
    from safetensors.torch import load_file
    out = str(tmp_path / "out")
    args = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", "--val_data=", f"--out_dir={out}", *SFT_ARGS,
            "--max_steps=3", "--save_every=1", "--keep_last=2", "--resume=True"]
    code, _, err = run("sft.py", *args)
    assert code == 0, err[-2000:]
    shutil.copy(os.path.join(out, "step_0000003", "model.safetensors"), tmp_path / "step3.safetensors")
    state_files = glob.glob(os.path.join(out, "step_0000003", "train_state", "*.distcp"))
    with open(state_files[0], "r+b") as f:
        f.truncate(os.path.getsize(state_files[0]) // 2)
    code, stdout, err = run("sft.py", *args)
    assert code == 0, err[-2000:]
    assert "step_0000003 cannot be resumed from" in stdout and os.path.basename(state_files[0]) in stdout
    assert "is truncated" in stdout and "falling back to" in stdout and "step_0000002 at step 2" in stdout
    assert [r["step"] for r in log(out)] == [1, 2, 3]  # step 3 trained again, logged once
    again, first = (load_file(p) for p in (os.path.join(out, "step_0000003", "model.safetensors"),
                                           tmp_path / "step3.safetensors"))
    assert all((again[k] - first[k]).abs().max() <= 1e-6 for k in first)
    state_files = glob.glob(os.path.join(out, "step_*", "train_state", "*.distcp"))
    for file in state_files:  # every checkpoint corrupt: stop, naming them
        open(file, "r+b").truncate(10)
    code, stdout, err = run("sft.py", *args)
    assert code != 0 and "no checkpoint of" in err and "step_0000002" in err and "step_0000003" in err, err[-2000:]


def without_timings(lines):
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS and not k.startswith("time_")} for line in lines]


def assert_same_run(killed, uninterrupted, final):
    """The same log lines (values to 1e-6) and the same final weights (to 1e-6) in two output folders."""
    from safetensors.torch import load_file
    a, b = without_timings(log(killed)), without_timings(log(uninterrupted))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=1e-6) for k in x), (x, y)
    weights = [load_file(os.path.join(d, final, "model.safetensors")) for d in (killed, uninterrupted)]
    assert weights[0].keys() == weights[1].keys()
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) <= 1e-6


@pytest.mark.parametrize("script", ["sft.py", "grpo.py"])
def test_a_rank_killed_mid_run_is_restarted_by_torchrun_and_ends_as_an_uninterrupted_run(script, tiny_checkpoint,
                                                                                          records_file, tmp_path):
    """Fault: a node lost or a worker preempted. `torchrun --max-restarts=1 ... --resume=True` (docs/training.md)
    must restart both ranks when one is SIGKILLed after a step past the checkpoint of step 2 was logged,
    resume from that checkpoint by itself, and end with the weights and log.jsonl of a run never interrupted (the
    step trained again logged once)."""
    steps = 5 if script == "sft.py" else 4
    args = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", f"--max_steps={steps}", "--save_every=2",
            "--resume=True"]
    args += [*SFT_ARGS, f"--val_data={records_file}", "--eval_every=2"] if script == "sft.py" else \
        [*GRPO_ARGS, "--prompts_per_step=4"]
    uninterrupted = str(tmp_path / "uninterrupted")
    code, _, err = run(script, *args, f"--out_dir={uninterrupted}", nproc=2, max_restarts=1)
    assert code == 0, err[-3000:]
    killed = str(tmp_path / "killed")
    proc = launch(script, *args, f"--out_dir={killed}", nproc=2, max_restarts=1)

    def step_3_logged():
        path = os.path.join(killed, "log.jsonl")
        return os.path.exists(path) and '"step": 3,' in open(path).read()
    wait_for(step_3_logged, proc)
    assert open(os.path.join(killed, "latest")).read() == "step_0000002", "the kill came too late"
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 0, err[-3000:]
    assert "resumed from" in out and "step_0000002 at step 2" in out, out[-2000:]  # the restarted ranks
    assert_same_run(killed, uninterrupted, f"step_{steps:07d}")


def test_grpo_killed_while_saving_leaves_a_latest_that_loads_and_resume_finishes(tiny_checkpoint, records_file,
                                                                                tmp_path):
    """Fault: kill -9 at a random moment of a checkpoint's writing (grpo.py saving every step). Every time, `latest`
    must load (training state and plain transformers), and the resumed run must finish with one log line a step."""
    import torch
    from transformers import AutoModelForImageTextToText
    from checkpoints import latest_checkpoint, load_training_checkpoint
    from model import load_model
    out = str(tmp_path / "out")
    args = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", f"--out_dir={out}", *GRPO_ARGS,
            "--max_steps=6", "--save_every=1", "--keep_last=2", "--resume=True"]
    pick = random.Random(0)
    model, _ = load_model(tiny_checkpoint, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for attempt in range(3):
        proc = launch("grpo.py", *args)
        wait_for(lambda: glob.glob(os.path.join(out, ".tmp-step_*")), proc, every=0.002)
        time.sleep(pick.uniform(0, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        latest = latest_checkpoint(out)
        if latest is None:  # killed in the first save: nothing to load yet
            continue
        state = load_training_checkpoint(latest, model, optimizer)
        assert latest.endswith(f"step_{state['step']:07d}")
        assert all(torch.isfinite(p).all() for p in AutoModelForImageTextToText.from_pretrained(latest).parameters())
    code, stdout, err = run("grpo.py", *args)
    assert code == 0, err[-2000:]
    assert [r["step"] for r in log(out)] == [1, 2, 3, 4, 5, 6]
