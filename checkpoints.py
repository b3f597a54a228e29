"""
checkpoints.py: models on disk, written so that a crash never leaves half of one.

- `save_checkpoint` / `export_model`: a Hugging Face-format model (safetensors, configs, processor) that transformers
  and vLLM load, written under a temporary name and renamed into place;
- `save_training_checkpoint`: a step folder, out_dir/step_NNNNNNN, with that model beside what exact resume needs
  (sharded model and optimizer state, every rank's RNG, train_state.json), and out_dir/latest pointing at it;
- `resume_training_checkpoint`: the newest step that every rank can read, falling back past unreadable ones;
  `latest_checkpoint`: the folder `latest` names (model.load_model uses it to load a training output dir).
"""

import json
import os
import shutil
import time

import torch
import torch.distributed as dist

from distributed import barrier, full_state_dict, is_distributed, print0


# ----------------------------------------------------------------------------------------------------
# Hugging Face-format models

def save_checkpoint(model, processor, out_dir, state_dict=None, dtype=None):
    """Write an HF-format checkpoint (safetensors + configs + processor) atomically.

    The folder is written next to `out_dir` under a temporary name and renamed into place, so a crash leaves
    either the previous checkpoint or the new one, never half of one. `state_dict` (e.g. gathered from
    FSDP shards) replaces the model's own; `dtype` casts its floats and says so in config.json.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(out_dir)}-{os.getpid()}-{time.time_ns()}")
    try:
        write_hf_model(model, processor, tmp, state_dict, dtype)
        for name in os.listdir(tmp):  # flush to disk before the rename makes it visible
            path = os.path.join(tmp, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out_dir):
        old = os.path.join(parent, f".old-{os.path.basename(out_dir)}-{time.time_ns()}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def write_hf_model(model, processor, folder, state_dict=None, dtype=None):
    """save_pretrained of the model (or of `state_dict`), its floats in `dtype` when given, config.json saying so
    (save_pretrained writes the dtype of the weights in memory, fp32 master weights here), and the processor."""
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v
                      for k, v in (state_dict if state_dict is not None else model.state_dict()).items()}
    model.save_pretrained(folder, state_dict=state_dict)
    if dtype is not None:
        config_file = os.path.join(folder, "config.json")
        config = json.load(open(config_file))
        for part in [config] + [v for v in config.values() if isinstance(v, dict) and "dtype" in v]:
            part["dtype"] = str(dtype).removeprefix("torch.")
        json.dump(config, open(config_file, "w"), indent=2)
    processor.save_pretrained(folder)


def export_model(model, processor, path, dtype=torch.float32):
    """The HF-format model alone at `path` (no training state: a starting point for later stages), written atomically
    over the one there; every rank must call (a sharded model is gathered), rank 0 writes."""
    full = full_state_dict(model)
    if not is_distributed() or dist.get_rank() == 0:
        save_checkpoint(model, processor, path, state_dict=full, dtype=dtype)
    barrier()


# ----------------------------------------------------------------------------------------------------
# training checkpoints: what exact resume needs, next to an HF-format model

def save_training_checkpoint(out_dir, step, model, optimizer, processor, train_state, keep_last=2,
                             dtype=torch.float32):
    """Write out_dir/step_NNNNNNN atomically and point out_dir/latest at it; every rank must call.

    The folder holds the HF-format model in `dtype` (loadable by transformers and vLLM; pass the compute dtype,
    bf16 on GPU: what people download and serve, half the size of the fp32 master weights) and, for exact
    resume, the
    sharded model + optimizer state (torch.distributed.checkpoint, written by every rank), each rank's RNG
    state, and `train_state.json` (step, data cursor, ...). It is written under a temporary name and renamed
    when complete; `latest` is replaced atomically afterwards, so a crash at any moment leaves the previous
    checkpoint as the latest. Only the newest `keep_last` step folders are kept (0: all), so that one is there to fall
    back on when the newest cannot be read (resume_training_checkpoint).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    rank = dist.get_rank() if is_distributed() else 0
    name = f"step_{step:07d}"
    final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, f".tmp-{name}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=os.path.join(tmp, "train_state"))
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
               os.path.join(tmp, f"rng_rank{rank}.pt"))
    full = full_state_dict(model)
    barrier()
    if rank == 0:
        write_hf_model(model, processor, tmp, full, dtype)
        with open(os.path.join(tmp, "train_state.json"), "w") as f:
            json.dump(train_state, f, indent=1)
        for root, _, files in os.walk(tmp):
            for file in files:
                with open(os.path.join(root, file), "rb") as f:
                    os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        with open(os.path.join(out_dir, "latest.tmp"), "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(out_dir, "latest.tmp"), os.path.join(out_dir, "latest"))
        steps = sorted(d for d in os.listdir(out_dir) if d.startswith("step_") and d <= name)
        # folders past this step were left by a run that then resumed from an earlier one (they could not be read)
        stale = [d for d in os.listdir(out_dir) if d.startswith("step_") and d > name]
        for old in stale + (steps[:-keep_last] if keep_last > 0 else []):
            shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(out_dir):
    """The folder `out_dir/latest` points at, or None."""
    pointer = os.path.join(out_dir, "latest")
    if not os.path.exists(pointer):
        return None
    path = os.path.join(out_dir, open(pointer).read().strip())
    return path if os.path.isdir(path) else None


def changed_on_resume(checkpoint_settings, settings, may_change):
    """{name: (the checkpoint's value, this run's)} of the settings this resumed run changes, all of them in
    `may_change` (those the stage script honours: its length and bookkeeping, never what the steps already taken
    depend on); a change to any other setting stops the run, naming it, since the checkpoint's state (its optimizer's
    learning rates, its data cursor, its model) would silently keep the old value. Settings the checkpoint does not
    name (added since it was written) are not compared."""
    changed = {k: (checkpoint_settings[k], v) for k, v in settings.items()  # a run folder may have been moved
               if k in checkpoint_settings and k not in ("resume", "out_dir") and checkpoint_settings[k] != v}
    refused = [f"{k}={now!r} (the checkpoint's: {then!r})" for k, (then, now) in changed.items() if k not in may_change]
    if refused:
        raise SystemExit(f"--resume: this run changes {', '.join(refused)}, which the steps already taken depend on; "
                         f"resume with the checkpoint's values (train_state.json, 'settings') or start a new run in "
                         f"another out_dir. A resumed run may change only {', '.join(sorted(may_change))}")
    return changed


def load_training_checkpoint(path, model, optimizer):
    """Restore model + optimizer shards and this rank's RNG from a training checkpoint; returns train_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(path, "train_state"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rank = dist.get_rank() if is_distributed() else 0
    rng_file = os.path.join(path, f"rng_rank{rank}.pt")
    if os.path.exists(rng_file):
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    with open(os.path.join(path, "train_state.json")) as f:
        return json.load(f)


def training_state_problem(path):
    """What keeps the training state of checkpoint `path` from being read, naming the file, or None. Every file that
    torch.distributed.checkpoint's metadata lists must hold the bytes it lists (a truncated file fails here by its
    name, not as a bare EOFError inside the loader) and train_state.json must parse."""
    import torch.distributed.checkpoint as dcp
    state_dir = os.path.join(path, "train_state")
    try:
        metadata = dcp.FileSystemReader(state_dir).read_metadata()
    except Exception as e:
        return f"{os.path.join(state_dir, '.metadata')} cannot be read ({type(e).__name__}: {e})"
    for info in metadata.storage_data.values():  # where each saved tensor lies: file, offset, length
        file = os.path.join(state_dir, info.relative_path)
        if not os.path.isfile(file):
            return f"{file} is missing"
        if os.path.getsize(file) < info.offset + info.length:
            return f"{file} is truncated ({os.path.getsize(file)} bytes, {info.offset + info.length} expected)"
    try:
        with open(os.path.join(path, "train_state.json")) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"{os.path.join(path, 'train_state.json')} cannot be read ({type(e).__name__}: {e})"
    return None


def resume_training_checkpoint(out_dir, model, optimizer):
    """Restore the newest checkpoint of out_dir that can be read: the one `latest` names or, when it cannot be read
    (a disk fault, a copy cut short), the step folders before it, newest first, each failure named with its file.
    Falling back loses the steps since that checkpoint, which the run then trains again; stopping instead would leave
    a `torchrun --max-restarts` job dead. Returns (path, train_state), or (None, None) where there is no checkpoint;
    SystemExit where none can be read. Every rank must call: they agree on the checkpoint, as FSDP needs."""
    latest = latest_checkpoint(out_dir)
    names = sorted((d for d in os.listdir(out_dir) if d.startswith("step_")), reverse=True) if os.path.isdir(
        out_dir) else []
    names = [d for d in names if latest is None or d <= os.path.basename(latest)]  # later ones: never made latest
    rank = dist.get_rank() if is_distributed() else 0
    failed = []
    for name in names:
        path = os.path.join(out_dir, name)
        problem = training_state_problem(path)
        if problem is None:
            try:
                state = load_training_checkpoint(path, model, optimizer)
            except Exception as e:  # a corrupt file the sizes do not show
                problem = f"{type(e).__name__}: {e}"
        ok = torch.tensor(float(problem is None), device="cuda" if torch.cuda.is_available() else "cpu")
        if is_distributed():  # one rank's failure is every rank's: they must resume from the same step
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item():
            if failed:
                print0(f"falling back to {path}, the newest checkpoint that can be read")
            return path, state
        if problem or rank == 0:
            print(f"{path} cannot be resumed from: {problem or 'another rank could not read it'}", flush=True)
        failed.append(path)
    if failed:
        raise SystemExit(f"no checkpoint of {out_dir} can be resumed from ({', '.join(failed)}, named above); "
                         f"move them away to start over")
    return None, None
