import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + [os.path.join(HERE, "fsdp_worker.py"), out], check=True, env=env, timeout=300)
    return json.load(open(out))


def test_two_process_fsdp2_matches_one_process(tmp_path):
    single = _run([sys.executable], str(tmp_path / "single.json"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sharded = _run(torchrun, str(tmp_path / "fsdp.json"))
    assert len(single["losses"]) == 3 and single["losses"][2] < single["losses"][0]
    for a, b in zip(single["losses"], sharded["losses"]):
        assert abs(a - b) < 1e-5
    assert abs(single["param_sum"] - sharded["param_sum"]) < 1e-3
