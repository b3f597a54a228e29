"""
distributed.py: one process or many: torchrun's process group, rank-0 printing, reductions, FSDP2 sharding, a sharded
model whole for generation, and the compute dtype.

Every stage script runs the same code in one process (a plain `python sft.py`, rank 0 of 1) and under torchrun, on one
node or several (`torchrun --nproc_per_node=8 ...`): nccl on GPU, gloo on CPU, a 2-hour collective timeout.
`load_model(rank0_only=True)` + `wrap_fsdp` shard a model whose weights only rank 0 read (FSDP2 `fully_shard` per
decoder layer and vision block, then the root); `gathered` holds a sharded model whole while it generates;
`full_state_dict` gathers it for saving; `end_distributed` is the last line of every torchrun entry point.
"""

import datetime
import os
import sys
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

# How long a rank waits in a collective before the run is declared hung. torch's default (10 minutes with NCCL)
# is shorter than some honest waits: rank 0 alone writing an 8B checkpoint, cold-start teacher ranks finishing
# hours of generation minutes apart.
DIST_TIMEOUT = datetime.timedelta(hours=2)


def default_device():
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed():
    """(rank, local_rank, world_size, device) from torchrun's env; a plain process is rank 0 of 1."""
    if "RANK" not in os.environ:
        return 0, 0, 1, default_device()
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank), timeout=DIST_TIMEOUT)
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo", timeout=DIST_TIMEOUT)
        device = torch.device("cpu")
    return rank, local_rank, world, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def end_distributed():
    """The last line of a torchrun worker: every rank waits for the others, leaves the process group and exits at once.
    Exiting normally races gloo's worker threads: one may still be freeing the last collective's tensors, which
    takes the GIL, and once the interpreter has begun shutting down that aborts the process (SIGABRT, "terminate
    called without an active exception"; 5 runs in 48 of tests/fsdp_worker.py beside a busy loop on 2 CPU cores).
    os._exit skips that shutdown."""
    if not is_distributed():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def print0(*args, **kwargs):
    if not is_distributed() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(values):
    """Average a dict of floats over ranks (for logging)."""
    if not is_distributed():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def wrap_fsdp(model, device, bf16=None):
    """FSDP2: shard every text decoder layer and vision block, then the root, with rank 0's weights.

    Rank 0's weights and buffers are broadcast into every rank's shards on `device`, so the other ranks may hold
    an empty meta-device model (load_model(rank0_only=True)); the rotary `inv_freq` buffers are not in a state
    dict and are broadcast too. On GPU parameters are held in bf16 for compute with fp32 gradient reduction; on
    CPU everything stays fp32. Create the optimizer after this call. Every rank must run the vision tower in
    every forward (give each micro-batch an image, see data.py), or the collectives go out of step.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    rank0 = dist.get_rank() == 0
    weights = model.state_dict() if rank0 else {}
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()} if rank0 else {}
    bf16 = torch.cuda.is_available() if bf16 is None else bf16
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for module in model.modules():
        if type(module).__name__ in ("Qwen3VLTextDecoderLayer", "Qwen3VLMoeTextDecoderLayer",
                                     "Qwen3VLVisionBlock", "Qwen3VLMoeVisionBlock"):
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    model.to_empty(device=device)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if rank0:
                buffer.copy_(buffers[name])
            dist.broadcast(buffer, src=0)
    # FSDP2 names its root at the first forward, which must then enter through the root; generate's image encoding
    # enters through the vision blocks, so name it now
    model._get_fsdp_state()._lazy_init()
    return model


@contextmanager
def gathered(model):
    """Generation on an FSDP2 model: every shard all-gathered once on entry and kept until exit.

    Needed twice over: `generate` encodes images through `get_image_features`, outside the root module's
    forward hooks, so after a backward has resharded the root the vision conv would meet DTensor weights; and
    with the decoder blocks' reshard-after-forward every decode step would all-gather every block again (~14 GB
    per token at 8B). Held whole, the model needs no collective until exit, so ranks may finish generating at
    different lengths (no synced_gpus). Costs one unsharded copy of the weights (bf16 on GPU) while inside.
    """
    from torch.distributed.fsdp import FSDPModule
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(module is not model, recurse=False)  # wrap_fsdp's (and FSDP2's) own


def full_state_dict(model):
    """The full (unsharded) state dict on CPU, gathered from FSDP2 shards if needed; every rank must call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not is_distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def compute_dtype(device):
    """What the models compute in: bf16 on GPU (autocast or FSDP2 mixed precision), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device):
    """bf16 autocast on GPU, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=compute_dtype(device))
    return nullcontext()


def barrier():
    if is_distributed():
        dist.barrier()
