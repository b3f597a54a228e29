"""The log-probs of chosen tokens computed chunk by chunk from the final hidden states (model.next_token_logprobs),
which GRPO's passes and SFT's loss use instead of the B x T x vocab logits."""
import json
import os
import subprocess
import sys

import pytest

from conftest import write_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, *args):
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("nproc", [1, 2])
def test_chunked_logprobs_and_gradients_equal_the_full_logits_path(tmp_path, nproc):
    """Values, entropies and every parameter's gradient, for a GRPO batch and an SFT packed row, in chunks of 5
    positions, on one process and on 2 FSDP2 ranks (where lm_head is sharded and only gathered inside the root's
    forward). Guards against: a wrong backward (softmax sign, temperature applied once), a chunk boundary dropped,
    positions shifted by one, or the projection called on a shard."""
    data = write_records(str(tmp_path / "data"), 4)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node=2"]
    run(launcher, os.path.join(ROOT, "tests", "logprobs_worker.py"), data, str(tmp_path / "out.json"))
    results = json.load(open(tmp_path / "out.json"))
    for name, r in results.items():
        assert r["n"] > 10 and r["n_grads"][0] == r["n_grads"][1] > 50, name  # every parameter got a gradient
        assert r["value"] < 1e-5 and r["entropy"] < 1e-4, (name, r)
        assert r["grad"] < 1e-5 * max(1.0, r["grad_scale"]), (name, r)


def test_one_grpo_micro_step_no_longer_holds_the_vocabulary_logits(tmp_path):
    """Peak memory (RSS) of one GRPO micro-step (forward and backward of 8 answers of 128 tokens) of a narrow model
    with Qwen's 151,936-token vocabulary: the full-logits path holds several 8 x 128 x 151,936 fp32 tensors (0.6 GiB
    each), the chunked one none of them."""
    proc = run([sys.executable, os.path.join(ROOT, "bench", "logprob_memory.py"), "--answer_tokens=128"])
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    logits_gib = 8 * 128 * 151936 * 4 / 2 ** 30
    assert peaks["full"] - peaks["chunked"] > 1.5 * logits_gib, peaks
