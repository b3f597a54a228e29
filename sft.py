"""
sft.py: stage 1, supervised fine-tuning of Qwen3-VL on multi-task chest X-ray instructions.

The paper's "RadVLM": a full fine-tune of Qwen3-VL-8B-Instruct on ~1.1 M instruction records (reports,
abnormality classification, anatomical / abnormality / phrase grounding, conversations) with lr 1e-5,
1 epoch, 10 % warm-up then cosine, bf16, images up to 262,144 pixels. The loss is the token-mean
cross-entropy on the assistant answers (and their closing <|im_end|>), over whole samples packed into rows
without padding (see data.pack_samples for why packing with M-RoPE needs 4-row position ids).

    python sft.py                                                   # CPU: tiny Qwen3-VL on the synthetic world
    python sft.py config/sft_paper.py --data=train.jsonl            # 1 GPU
    torchrun --nproc_per_node=8 sft.py config/sft_paper.py --data=train.jsonl
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nproc_per_node=8 --max-restarts=3 sft.py ... --resume=True

The last is crash-tolerant: restarted ranks resume from the newest checkpoint that can be read; the variable keeps
torchrun from handing them the killed ranks' addresses, on which they hang (pytorch/pytorch#135712).

Settings are the globals below; override with config files and --key=value (configurator.py).
Data that cannot make progress stops the run with the reason: a file of which no record can be used, a whole pass
over a rank's records without a usable one, data that fills fewer rows than the first step needs.
Deliberately left out: LoRA, sequence parallelism, dynamic-resolution bucketing, mixing of dataset weights
(mix your JSONL yourself), and a data loader that skips ahead without re-reading the current window.
"""

import collections
import itertools
import json
import math
import os
import time

import torch
from tqdm import tqdm

from checkpoints import (changed_on_resume, export_model, latest_checkpoint, resume_training_checkpoint,
                         save_training_checkpoint)
from configurator import configure
from data import N_NAMED, PackedWindows, model_inputs, open_records, pack_samples, tiny_corpus, tokenize_window
from distributed import autocast, compute_dtype, end_distributed, init_distributed, print0, wrap_fsdp
from evaluate import held_out_prompts, held_out_rewards
from logs import RunLog
from model import load_model, next_token_logprobs

# model and data
init_from = "tiny"        # "tiny" (random tiny Qwen3-VL built from a config), a checkpoint dir, or a hub id
data = "synthetic"        # "synthetic" (the generated chest X-ray world) or a RadVLM/LLaVA .json/.jsonl file
val_data = "synthetic"    # held-out records for the evaluations: "synthetic" (its val split), a file, or "" for none
n_train = 100000          # synthetic training records: the first n_train studies, one task each (ignored for files)
mix = ""                  # their tasks' weights instead of synthetic.DEFAULT_MIX's: "abnormality_grounding=0.45,..."
n_val = 96                # held-out records whose loss is val_loss
n_eval = 64               # held-out prompts per task (report, grounding) answered greedily for val_reward_* (0: none)
max_new_tokens = 96       # longest of those greedy answers
image_size = 128          # side of the synthetic images in pixels
min_pixels = 1024         # processor pixel budget per image (the paper: max 262,144 = 512 x 512 for SFT)
max_pixels = 16384
thinking = False          # append the " /think" request to every question (cold-start data does this itself)
# optimization
max_tokens = 1024         # tokens per packed row
rows_per_step = 4         # packed rows per optimizer step on each rank (gradient accumulation micro-steps)
epochs = 1                # passes over the data
max_steps = 1200          # stop after this many steps or at the end of `epochs`, whichever is first (0: `epochs`);
                          # the tiny model learns the answers' language first and the image after ~600 (#36)
lr = 2e-3                 # peak learning rate of the language model
vision_lr = 4e-3          # peak learning rate of the vision tower (with its mergers into the language model)
freeze_vision = False     # keep the vision tower fixed
warmup = 0.1              # fraction of steps of linear warm-up, then cosine to 10 % of the peak
weight_decay = 0.05       # AdamW weight decay on matrices (not on norms and biases)
beta1 = 0.9
beta2 = 0.98
grad_clip = 1.0           # clip the global gradient norm (0: off)
grad_checkpointing = False  # recompute activations in the backward pass to save memory
# system
out_dir = "out/sft"
save_every = 500          # checkpoint every N steps and at the end (0: never)
keep_last = 2             # step folders to keep (0: all); 2 or more leave one to fall back on if the newest is corrupt
eval_every = 100          # val_loss, val_reward_* every N steps and at the end (0: never); the best in out_dir/best
window = 256              # records tokenized and packed together (bigger: better packing, slower resume)
num_workers = 1           # background threads that decode images, tokenize and pack the next windows
strict = False            # a bad record stops the run instead of being skipped and counted
resume = False            # continue from out_dir/latest
seed = 0
wandb_log = False         # also log every row of log.jsonl to Weights & Biases (logs.py)
wandb_project = "radvlm-grpo"
wandb_run_name = ""       # default: the out_dir's name
settings = configure(globals())
# what a resumed run may change (any other change stops it): the run's length, which then sets a new schedule, and
# what only decides when to evaluate, save or log, and how fast
MAY_CHANGE_ON_RESUME = {"max_steps", "epochs", "eval_every", "save_every", "keep_last", "num_workers", "n_eval",
                        "max_new_tokens", "grad_checkpointing", "strict", "wandb_log", "wandb_project",
                        "wandb_run_name"}

# ---------------------------------------------------------------------------------------------------
rank, local_rank, world, device = init_distributed()
master = rank == 0
# the data before the model: records that cannot be used stop the run before minutes of loading
train_records = open_records(data, "train", n_train, image_size, strict=strict, mix=mix)
val_records = open_records(val_data, "val", n_val, image_size, strict=strict) if val_data and eval_every else []
val_prompts = held_out_prompts(val_data, n_eval, image_size, rank=rank, world=world) \
    if val_data and eval_every and n_eval else {}
torch.manual_seed(seed)
# fp32 master weights, bf16 compute on GPU: a bf16 weight would not move under updates of lr 1e-5 x its size;
# on N ranks only rank 0 reads them, and wrap_fsdp broadcasts them into the shards
model, processor = load_model(init_from, dtype=torch.float32, device=device, min_pixels=min_pixels,
                              max_pixels=max_pixels, rank0_only=world > 1, seed=seed,
                              tiny_corpus=tiny_corpus)
model.config.use_cache = False
if grad_checkpointing:
    model.gradient_checkpointing_enable()
vision_params = set(model.model.visual.parameters())
for p in vision_params:
    p.requires_grad_(not freeze_vision)
if world > 1:
    wrap_fsdp(model, device)
    vision_params = set(model.model.visual.parameters())  # fully_shard swapped them for DTensors
else:
    model.to(device)
# AdamW with a lower learning rate for the vision tower and no decay on norms/biases, as is usual
groups = {}
for p in model.parameters():
    if p.requires_grad:
        key = ("vision" if p in vision_params else "text", p.dim() >= 2)
        groups.setdefault(key, []).append(p)
optimizer = torch.optim.AdamW(
    [{"params": ps, "part": part, "base_lr": vision_lr if part == "vision" else lr,
      "weight_decay": weight_decay if decay else 0.0} for (part, decay), ps in groups.items()],
    betas=(beta1, beta2), fused=device.type == "cuda")

model.train()

# where the next row comes from: the pass over the data, the window in it and the row in that window (0-based)
Cursor = collections.namedtuple("Cursor", "epoch window row")
step, cursor, skipped, tokens_seen, total_steps = 0, Cursor(0, 0, 0), 0, 0, 0
best = {"step": None, "val_reward": -math.inf}  # the evaluation with the highest mean val_reward_*, in out_dir/best
resumed_from, state = resume_training_checkpoint(out_dir, model, optimizer) if resume else (None, None)
changed = changed_on_resume(state["settings"], settings, MAY_CHANGE_ON_RESUME) if state else {}
if state:
    step, cursor, tokens_seen = state["step"], Cursor(*state["cursor"]), state["tokens_seen"]
    skipped = state["skipped"] if master else 0  # the count of all ranks, carried on by rank 0
    # the schedule of the original run, not a new estimate, unless this run changes its length
    total_steps = 0 if {"max_steps", "epochs"} & set(changed) else state["total_steps"]
    best = state["best"]
    print0(f"resumed from {resumed_from} at step {step}"
           + "".join(f"; {k} {then!r} -> {now!r}" for k, (then, now) in changed.items()))

stream = PackedWindows(train_records, processor, model, max_tokens, window, rank, world, seed,
                       start=(cursor.epoch, cursor.window), strict=strict, thinking=thinking, num_workers=num_workers)
windows = iter(stream)


def train_rows(windows, skip_in_first_window):
    """(epoch, cursor after the row, row) for every training row of this rank, in order, from the resume point.
    A whole pass over this rank's windows without a row stops the run: the stream would go round them forever."""
    global skipped
    barren, n_bad, first_bad = 0, 0, []  # windows in a row without a row, their bad records, the first of those
    for item in windows:
        if skip_in_first_window == 0:
            skipped += len(item["problems"])
            for problem in item["problems"][:3]:
                print(f"[rank {rank}] skipped {problem}", flush=True)
        n = len(item["rows"])
        if n:
            barren, n_bad, first_bad = 0, 0, []
        else:
            barren, n_bad = barren + 1, n_bad + len(item["problems"])
            first_bad = (first_bad + item["problems"])[:N_NAMED]
        if barren == stream.n_windows:
            raise SystemExit(f"[rank {rank}] no usable record in a whole pass over this rank's share of {data}: "
                             f"{n_bad} records skipped, the first: " + "; ".join(first_bad))
        for r in range(skip_in_first_window, n):
            nxt = (Cursor(item["epoch"], item["window"], r + 1) if r + 1 < n
                   else Cursor(item["epoch"], item["window"] + 1, 0))
            if nxt.window == stream.n_windows:
                nxt = Cursor(item["epoch"] + 1, 0, 0)
            yield item["epoch"], nxt, item["rows"][r]
        skip_in_first_window = 0


if not total_steps:  # the schedule ends where training does: at max_steps or after `epochs`, whichever comes first
    first = next(windows)  # the epochs' length, estimated from how many records the first window packs per row
    windows = itertools.chain([first], windows)
    per_row = (min(window, len(train_records)) - len(first["problems"])) / max(1, len(first["rows"]))
    # a first window without a usable record gives no estimate: train_rows then stops the run with the reasons
    epoch_steps = math.ceil(epochs * len(train_records) / world / per_row / rows_per_step) if per_row else max_steps
    total_steps = max(1, min(epoch_steps, max_steps or epoch_steps))
rows = train_rows(windows, cursor.row)


def lr_factor(it, total_steps):
    """Linear warm-up, then cosine from 1 down to 0.1 at total_steps."""
    warm = max(1, int(warmup * total_steps))
    if it < warm:
        return (it + 1) / warm
    progress = min(1.0, (it - warm) / max(1, total_steps - warm))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def to_device(row):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in row.items()}


def row_loss_sum(row):
    """Sum of the next-token cross-entropy over the row's label tokens, from the hidden states of those positions
    only, chunk by chunk (model.next_token_logprobs): never a row x vocab tensor of logits."""
    with autocast(device):
        logprobs, _ = next_token_logprobs(model, model_inputs(row), row["labels"] != -100)
    return -logprobs.sum()


val_rows = []
if val_records:
    val_samples, _ = tokenize_window(val_records, range(len(val_records)), processor, max_tokens, thinking=thinking)
    packed, _ = pack_samples(val_samples, model, max_tokens)
    val_rows = packed[:len(packed) // world * world][rank::world]  # equal counts: FSDP needs every rank in step


def evaluate_val_loss():
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for row in val_rows:
            row = to_device(row)
            total += torch.stack([row_loss_sum(row).double(), (row["labels"][0, 1:] != -100).sum().double()])
    if world > 1:
        torch.distributed.all_reduce(total)
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def validate(step):
    """val_loss, the greedy rewards of the held-out prompts (GRPO's rewards), and whether this is the best model so
    far by their mean: then it is written to out_dir/best, where the stages after SFT start from. Selecting on the
    validation split, never the test split, is early stopping: with a finite training set, later epochs overfit."""
    metrics = {"val_loss": evaluate_val_loss()} if val_rows else {}
    metrics.update(held_out_rewards(model, processor, val_prompts, device, thinking, max_new_tokens))
    scores = [v for k, v in metrics.items() if k.startswith("val_reward_")]
    if scores and sum(scores) / len(scores) > best["val_reward"]:
        best.update(step=step, val_reward=sum(scores) / len(scores))
        export_model(model, processor, os.path.join(out_dir, "best"), compute_dtype(device))
        metrics["best"] = True
    return metrics


saved_step = step if state else None  # the step of the newest checkpoint: a resumed run's is where it starts


def save(step, cursor):
    global saved_step
    saved_step = step
    all_skipped = torch.tensor(float(skipped), device=device)
    if world > 1:
        torch.distributed.all_reduce(all_skipped)
    save_training_checkpoint(out_dir, step, model, optimizer, processor,
                             keep_last=keep_last, dtype=compute_dtype(device),
                             train_state={"step": step, "total_steps": total_steps, "cursor": list(cursor),
                                          "skipped": int(all_skipped.item()), "tokens_seen": tokens_seen,
                                          "best": best, "settings": settings})


n_params = sum(p.numel() for p in model.parameters())  # FSDP2's DTensors report their full size
peak_flops = 989e12 if device.type == "cuda" else None  # bf16 dense H100/H200; MFU is reported on GPU only
if master:
    os.makedirs(out_dir, exist_ok=True)
    log = RunLog(out_dir, step, settings, wandb_log, wandb_project, wandb_run_name)
print0(f"sft: {n_params / 1e6:.2f} M parameters, {len(train_records)} training records, {world} rank(s), "
       f"{total_steps} steps of {rows_per_step} x {max_tokens}-token rows per rank")
if state and total_steps != state["total_steps"]:
    print0(f"the run's length changed: it goes on to step {total_steps}, on the learning-rate schedule of a "
           f"{total_steps}-step run (x{lr_factor(step, total_steps):.3f} of the peak rate at step {step + 1}; the "
           f"{state['total_steps']}-step schedule it was on would give x{lr_factor(step, state['total_steps']):.3f})")
if step == 0 and (val_rows or val_prompts):
    first_val = validate(0)
    print0(f"step 0 {json.dumps(first_val)}")
    if master:
        log.write({"step": 0, **first_val})
bar = tqdm(total=total_steps, initial=step, disable=not master, dynamic_ncols=True)
while step < total_steps:
    t0 = time.time()
    batch = []
    for epoch, nxt, row in rows:
        if epoch >= epochs:
            break
        batch.append(to_device(row))
        cursor = nxt
        if len(batch) == rows_per_step:
            break
    out_of_data = torch.tensor(float(len(batch) < rows_per_step), device=device)
    if world > 1:  # every rank must stop at the same step, or the others wait forever
        torch.distributed.all_reduce(out_of_data, op=torch.distributed.ReduceOp.MAX)
    if out_of_data.item():
        if step == 0:  # nothing trained: "done" would hide that the data is too small
            raise SystemExit(f"{data} fills fewer rows than one step needs: {len(batch)} of --rows_per_step="
                             f"{rows_per_step} rows of --max_tokens={max_tokens} tokens on rank {rank} in --epochs="
                             f"{epochs}; lower --rows_per_step or --max_tokens, raise --epochs or add records"
                             if len(batch) < rows_per_step else "another rank ran out of data before the first step")
        break
    # normalize by the label tokens of the whole step on all ranks: the exact token mean, whatever the packing
    counts = torch.tensor([float(sum((r["labels"][0, 1:] != -100).sum() for r in batch)),
                           float(sum(r["input_ids"].shape[1] for r in batch))], device=device)
    if world > 1:
        torch.distributed.all_reduce(counts)
    n_label, n_tokens = counts.tolist()
    loss_sum = 0.0
    # FSDP2 reduce-scatters each micro-step's gradients into the shards: deferring that to the last micro-step
    # (set_requires_gradient_sync(False)) would hold a whole unsharded fp32 gradient on every rank
    for row in batch:
        loss = row_loss_sum(row)
        if not torch.isfinite(loss):
            raise SystemExit(f"non-finite loss at step {step + 1} on rank {rank}, records {row['ids']}")
        (loss * world / n_label).backward()
        loss_sum += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_factor(step, total_steps)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    tokens_seen += int(n_tokens)
    dt = time.time() - t0
    totals = torch.tensor([loss_sum, float(skipped)], dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(totals)
    record = {"step": step, "loss": totals[0].item() / n_label,
              **{"lr" if g["part"] == "text" else "lr_vision": g["lr"] for g in optimizer.param_groups},
              "grad_norm": grad_norm.item(), "tokens": int(n_tokens), "tokens_per_s": n_tokens / dt,
              "skipped": int(totals[1].item())}
    if peak_flops:
        record["mfu"] = 6 * n_params * n_tokens / dt / (peak_flops * world)
    if (val_rows or val_prompts) and (step % eval_every == 0 or step == total_steps):
        record.update(validate(step))
    if master:
        log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}", tok_s=f"{record['tokens_per_s']:.0f}",
                        **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
        bar.update(1)
    if save_every and step % save_every == 0:
        save(step, cursor)
bar.close()
if master:
    log.close()
if (val_rows or val_prompts) and step % eval_every and step != total_steps:
    print0(f"final {json.dumps(validate(step))}")
if save_every and saved_step != step:  # not again where it was saved (a finished run resumed: nothing to do)
    save(step, cursor)
print0(f"done: {step} steps, {tokens_seen} tokens, {skipped} records skipped; "
       + (f"model in {latest_checkpoint(out_dir)}" if save_every else "no checkpoint saved (--save_every=0)")
       + (f"; the best by mean val reward ({best['val_reward']:.4f}, step {best['step']}) in {out_dir}/best"
          if best["step"] is not None else ""))
end_distributed()
