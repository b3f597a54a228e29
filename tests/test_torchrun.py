"""Every stage script as 2 torchrun processes (FSDP2 on gloo, one thread each): steps after updates, checkpoints that
plain transformers loads, and resume equal to an uninterrupted run. Where the math says 2 ranks equal 1 process
(SFT's losses, greedy evaluation, the cold-start traces) it is asserted; GRPO's sampling draws from each rank's own
seed, so its 2-rank run is compared with itself across a resume (tests/grpo_worker.py holds its 2 == 1 checks).

SFT and GRPO resume on 2 nodes: runs/multinode.sh started twice on this machine, two "nodes" of one process each that
meet through torchrun's c10d rendezvous on 127.0.0.1 and share the out_dir, as cluster nodes share a filesystem. Each
node's process has LOCAL_RANK 0 and only one has RANK 0; the steps they train after the resume must be the 1-node
run's, every file written once."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import weights_and_optimizer_after, write_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, nproc, *args):
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + [os.path.join(ROOT, script), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def two_nodes(script, *args):
    """runs/multinode.sh as 2 nodes x 1 process, both started here: the two nodes' outputs (stdout and stderr)."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "2", "NPROC": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "RDZV_ID": f"test-{os.getpid()}-{port}",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    nodes = [subprocess.Popen(["bash", os.path.join(ROOT, "runs", "multinode.sh"), os.path.join(ROOT, script), *args],
                              cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(output[-4000:] for output in outputs)
    return outputs


def log(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def crash_after(out_dir, step, copy):
    """The output folder of the run as it was when killed right after its checkpoint of `step`."""
    shutil.copytree(out_dir, copy)
    for name in os.listdir(copy):
        if name.startswith("step_") and int(name[5:]) > step:
            shutil.rmtree(os.path.join(copy, name))
    open(os.path.join(copy, "latest"), "w").write(f"step_{step:07d}")
    kept = [line for line in open(os.path.join(copy, "log.jsonl")) if json.loads(line)["step"] <= step]
    open(os.path.join(copy, "log.jsonl"), "w").write("".join(kept))
    return copy


def loads_with_plain_transformers(out_dir):
    import torch
    from transformers import AutoModelForImageTextToText
    latest = os.path.join(out_dir, open(os.path.join(out_dir, "latest")).read())
    model = AutoModelForImageTextToText.from_pretrained(latest)
    return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    return write_records(str(tmp_path_factory.mktemp("torchrun_data")), 16)


def test_sft_on_two_ranks_saves_and_resumes_exactly_on_two_nodes_past_checkpoints_one_rank_cannot_read(
        tiny_checkpoint, records_file, tmp_path):
    """4 steps on 2 ranks, saved every step. Then, as if the run had died: its step 4 damaged in rank 1's own shard of
    the sharded state (truncated) and its step 3 in rank 1's own RNG file (garbled: only rank 1 reads it). Resumed on
    2 nodes, both ranks must pass over both and fall back to step 2 together (a rank resuming from a step the other
    cannot read would train different steps, or hang in FSDP's collectives), and train steps 3 and 4 again to the
    1-node run's log and weights, the log and each checkpoint written once: by global rank 0, not by each node's
    first rank."""
    import torch
    from safetensors.torch import load_file
    out = str(tmp_path / "sft")
    args = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", f"--val_data={records_file}", "--lr=1e-3",
            "--vision_lr=1e-3", "--max_tokens=512", "--rows_per_step=1", "--window=4", "--epochs=50", "--max_steps=4",
            "--save_every=1", "--keep_last=3", "--eval_every=2", "--num_workers=1"]
    run("sft.py", 2, *args, f"--out_dir={out}")
    full = {r["step"]: r for r in log(out)}
    assert sorted(full) == [0, 1, 2, 3, 4] and "val_loss" in full[2] and full[4]["loss"] < full[1]["loss"]
    assert loads_with_plain_transformers(out)
    resumed_dir = str(tmp_path / "resumed")
    shutil.copytree(out, resumed_dir)
    shard = os.path.join(resumed_dir, "step_0000004", "train_state", "__1_0.distcp")
    os.truncate(shard, os.path.getsize(shard) // 2)
    open(os.path.join(resumed_dir, "step_0000003", "rng_rank1.pt"), "wb").write(b"garbled" * 100)
    outputs = two_nodes("sft.py", *args, f"--out_dir={resumed_dir}", "--resume=True")
    printed = "\n".join(outputs)
    assert printed.count(f"{shard} is truncated") == 2  # each rank checks every rank's files against the metadata
    step3 = [line for line in printed.splitlines() if "step_0000003 cannot be resumed from" in line]
    assert len(step3) == 2 and sum("another rank could not read it" in line for line in step3) == 1, step3
    assert f"{resumed_dir}/step_0000002 at step 2" in printed
    assert sum("done: 4 steps" in output for output in outputs) == 1  # printed by global rank 0 alone
    resumed = {r["step"]: r for r in log(resumed_dir)}
    assert sorted(resumed) == [0, 1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "grad_norm", "tokens"):
            assert abs(full[step][key] - resumed[step][key]) <= 1e-6, (step, key)
    assert abs(full[4]["val_loss"] - resumed[4]["val_loss"]) <= 1e-6
    assert sorted(os.listdir(resumed_dir)) == ["best", "latest", "log.jsonl", "step_0000002", "step_0000003",
                                               "step_0000004"]
    weights = [load_file(os.path.join(d, "step_0000004", "model.safetensors")) for d in (out, resumed_dir)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6, rtol=0) for k in weights[0])


def test_grpo_on_two_ranks_steps_evaluates_saves_and_resumes_exactly(tiny_checkpoint, tmp_path):
    """Image prompts of the synthetic world, 3 steps (so rollouts come from an updated, resharded policy), greedy
    held-out rewards at steps 0, 2 and 3, a checkpoint every step, and a resume from step 2 on 2 nodes. rollouts.jsonl
    (one group a step, --log_rollouts=1) is written by rank 0 alone and ends after the resume as the uninterrupted
    run's: fails if both ranks (or both nodes' first ranks) write it, or if the resumed run appends step 3 again
    after the killed run's step 3."""
    out = str(tmp_path / "grpo")
    args = [f"--init_from={tiny_checkpoint}", "--data=synthetic", "--n_train=48", "--n_eval=4", "--task=both",
            "--prompts_per_step=4", "--mini_batch=2", "--micro_batch=3", "--group_size=3", "--max_new_tokens=12",
            "--lr=1e-3", "--max_steps=3", "--eval_every=2", "--save_every=1", "--log_rollouts=1"]
    run("grpo.py", 2, *args, f"--out_dir={out}")
    full = {r["step"]: r for r in log(out)}
    assert sorted(full) == [0, 1, 2, 3]
    assert [full[s]["task"] for s in (1, 2, 3)] == ["report", "grounding", "report"]
    assert all(f"val_reward_{t}" in full[s] for s in (0, 2, 3) for t in ("report", "grounding"))
    assert full[2]["grad_norm"] > 0 and full[3]["kl"] > 0  # the policy moved away from the reference
    assert loads_with_plain_transformers(out)
    resumed_dir = crash_after(out, 2, str(tmp_path / "resumed"))
    outputs = two_nodes("grpo.py", *args, f"--out_dir={resumed_dir}", "--resume=True")  # step 3 on 2 nodes
    assert sum("done: 3 steps" in output for output in outputs) == 1
    resumed = {r["step"]: r for r in log(resumed_dir)}
    for key in ("reward_mean", "kl", "loss", "grad_norm", "response_length", "entropy", "val_reward_report",
                "val_reward_grounding"):
        assert abs(full[3][key] - resumed[3][key]) <= 1e-6, key
    rollouts = [open(os.path.join(d, "rollouts.jsonl")).read() for d in (out, resumed_dir)]
    steps = [json.loads(line)["step"] for line in rollouts[0].splitlines()]
    assert steps == [1, 2, 3] and rollouts[1] == rollouts[0]
    assert all(len(json.loads(line)["completions"]) == 3 for line in rollouts[0].splitlines())


def test_grpo_on_two_ranks_with_a_frozen_vision_tower_keeps_it_bit_identical(tiny_checkpoint, tmp_path):
    """--freeze_vision=True under FSDP2 on 2 ranks, 2 steps: the saved vision weights (blocks, mergers, patch and
    position embeddings) are bit-identical to the starting checkpoint's, every other weight moved, and the sharded
    AdamW state covers exactly those. Fails if the tower still trains or holds AdamW state once sharded, or if
    clipping or the reduce-scatter trips over the parameters that have no gradient."""
    out = str(tmp_path / "frozen")
    run("grpo.py", 2, f"--init_from={tiny_checkpoint}", "--data=synthetic", "--n_train=48", "--task=both",
        "--prompts_per_step=4", "--mini_batch=2", "--micro_batch=3", "--group_size=3", "--max_new_tokens=12",
        "--lr=1e-3", "--max_steps=2", "--eval_every=0", "--save_every=2", "--freeze_vision=True", f"--out_dir={out}")
    assert log(out)[-1]["grad_norm"] > 0
    changed, kept, held = weights_and_optimizer_after(tiny_checkpoint, out)
    assert kept and all(".visual." in name for name in kept)
    assert changed and held == changed and not any(".visual." in name for name in changed)


def test_grpo_ranks_share_out_the_prompts_of_a_step(tiny_checkpoint, records_file, tmp_path):
    """Rank r takes prompts r, r + 2, ... of a step: the ranks' prompts are disjoint and together one process's."""
    args = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", "--task=report", "--prompts_per_step=4",
            "--mini_batch=2", "--group_size=2", "--max_new_tokens=6", "--max_steps=2", "--eval_every=0",
            "--save_every=0"]
    run("tests/grpo_wiring_worker.py", 2, str(tmp_path / "two.json"), *args, f"--out_dir={tmp_path / 'two'}")
    run("tests/grpo_wiring_worker.py", 1, str(tmp_path / "one.json"), *args, f"--out_dir={tmp_path / 'one'}")
    one = json.load(open(tmp_path / "one.json"))
    ranks = [json.load(open(tmp_path / f"two.json.rank{r}")) for r in (0, 1)]
    for step in range(2):
        golds = one[step]["golds"]
        assert ranks[0][step]["golds"] == golds[0::2] and ranks[1][step]["golds"] == golds[1::2]


def test_coldstart_on_two_ranks_shards_the_traces_beside_replayed_records(tiny_checkpoint, tmp_path):
    """Traces (with SFT records replayed beside them) sharded over 2 ranks equal 1 process's; sft.py fine-tunes on them."""
    for n in (2, 1):
        run("coldstart.py", n, "--n_records=12", "--min_words=5", f"--out_dir={tmp_path / str(n)}")
    traces = {n: [json.loads(line) for line in open(tmp_path / str(n) / "coldstart.jsonl")] for n in (1, 2)}
    # 12 traces and the 12 SFT records replayed beside them (replay=2.0, capped at them), without thinking, same studies
    thinking = [r for r in traces[2] if r["conversations"][0]["value"].endswith(" /think")]
    replayed = [r for r in traces[2] if r not in thinking]
    assert len(thinking) == len(replayed) == 12 and not any("<think>" in str(r) for r in replayed)
    assert {r["study_seed"] for r in replayed} == {r["study_seed"] for r in thinking}
    key = lambda r: r["id"]  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if k != "image"}  # noqa: E731  (each run writes its own PNGs)
    assert [strip(r) for r in sorted(traces[2], key=key)] == [strip(r) for r in sorted(traces[1], key=key)]
    model_dir = str(tmp_path / "2" / "model")
    run("sft.py", 2, "config/coldstart.py", f"--init_from={tiny_checkpoint}",
        f"--data={tmp_path / '2' / 'coldstart.jsonl'}", f"--out_dir={model_dir}", "--max_steps=2", "--rows_per_step=1",
        "--epochs=10", "--max_tokens=1024", "--num_workers=0")
    assert [r["step"] for r in log(model_dir)] == [1, 2]
    assert loads_with_plain_transformers(model_dir)


def test_evaluate_on_two_ranks_equals_one_process(tiny_checkpoint, tmp_path):
    args = [f"--init_from={tiny_checkpoint}", "--n_test=12", "--max_new_tokens=8", "--generate_batch=4",
            "--bootstrap=50"]
    run("evaluate.py", 2, *args, f"--out_dir={tmp_path / 'two'}")
    run("evaluate.py", 1, *args, f"--out_dir={tmp_path / 'one'}")
    predictions = {n: open(tmp_path / n / "predictions.jsonl").read() for n in ("one", "two")}
    assert predictions["two"] == predictions["one"] and len(predictions["one"].splitlines()) == 12
    results = {n: json.load(open(tmp_path / n / "results.json")) for n in ("one", "two")}
    assert {k: v for k, v in results["two"].items() if k != "settings"} == \
           {k: v for k, v in results["one"].items() if k != "settings"}
