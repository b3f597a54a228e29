"""
The checks that need a GPU, in one go (sized for about 5 minutes on one H200; not yet run on one), on a randomly
initialised model of Qwen3-VL-2B's real shape in bf16 with images of up to 262,144 pixels:

1. packing with flash-attention-2 (and eager) gives the same logits as packing with sdpa, and as each sample alone;
2. FSDP2 on NCCL: a sharded training step (mixed precision), then greedy generation from an image prompt with the
   policy gathered once per call (distributed.gathered), match a plain copy stepped alike; peak memory of each; generate
   tokens/s and all-gathers per call, gathered once vs. per token (how generation ran before distributed.gathered);
3. SFT tokens/s and MFU (bench/bench_sft.py), GRPO step time split (bench/bench_grpo.py), peak memory.

    python bench/gpu_check.py                      # 1 GPU; prints markdown and writes it to out/gpu_check.md
    python bench/gpu_check.py --shape=tiny         # the same code paths on CPU (gloo, sdpa only), a dry run

"""
import datetime
import importlib.util
import os
import subprocess
import sys
import time
from contextlib import nullcontext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup  # noqa: E402

import synthetic  # noqa: E402
from configurator import configure  # noqa: E402
from data import generation_kwargs, model_inputs, pack_samples, prompt_batch, tokenize_window  # noqa: E402
from data import tiny_corpus  # noqa: E402
from distributed import autocast, default_device, gathered, wrap_fsdp  # noqa: E402
from model import build_random, build_tiny  # noqa: E402

shape = "2b"              # "2b" / "4b" / "8b", or "tiny" for a CPU dry run
image_size = 512          # synthetic image side
max_pixels = 262144
n_samples = 8             # samples packed into the row that is compared
grpo_steps = 4            # GRPO steps timed (the first is warm-up)
out_file = "out/gpu_check.md"
configure(globals())

device = default_device()
lines = [f"GPU check, {datetime.date.today()}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
         f"torch {torch.__version__}, shape {shape}, images up to {max_pixels} pixels\n"]
say = lambda text="": (print(text, flush=True), lines.append(text))  # noqa: E731


def build(dtype):
    if shape == "tiny":
        model, processor = build_tiny(texts=tiny_corpus(), max_pixels=max_pixels)
        return model.to(device, dtype), processor
    return build_random(shape, device=device, dtype=dtype, max_pixels=max_pixels, attn_implementation="sdpa")


# --- 1. packed logits: flash-attention-2 vs sdpa vs each sample alone
t0 = time.time()
model, processor = build(torch.bfloat16)
model.eval()
samples, _ = tokenize_window(synthetic.SyntheticRecords("train", n_samples, size=image_size), range(n_samples),
                             processor, None)
rows, _ = pack_samples(samples, model, sum(len(s["input_ids"]) for s in samples))
row = {k: v.to(device) if torch.is_tensor(v) else v for k, v in rows[0].items()}
order = [s for i in rows[0]["ids"] for s in samples if s["id"] == i]  # the samples in their packed order


def packed_logprobs(impl):
    model.set_attn_implementation(impl)
    with torch.no_grad(), autocast(device):
        return torch.log_softmax(model(**model_inputs(row)).logits[0].float(), -1)


def separate_logprobs():
    model.set_attn_implementation("sdpa")
    out = []
    for s in order:
        kw = {k: s[k][None].to(device) for k in ("input_ids", "mm_token_type_ids")}
        if "pixel_values" in s:
            kw.update(pixel_values=s["pixel_values"].to(device), image_grid_thw=s["image_grid_thw"].to(device))
        with torch.no_grad(), autocast(device):
            out.append(torch.log_softmax(model(**kw, use_cache=False).logits[0].float(), -1))
    return torch.cat(out)


reference = separate_logprobs()
flash = device.type == "cuda" and importlib.util.find_spec("flash_attn")
impls = ["sdpa", "eager"] + (["flash_attention_2"] if flash else [])
say(f"## 1. Packed row of {len(order)} samples, {row['input_ids'].shape[1]} tokens: log-prob differences\n")
say("| attention | vs sdpa packed: max / mean | vs each sample alone (sdpa): max / mean |")
say("|---|---|---|")
packed = {impl: packed_logprobs(impl) for impl in impls}
for impl, lp in packed.items():
    d_sdpa, d_alone = (lp - packed["sdpa"]).abs(), (lp - reference).abs()
    say(f"| {impl} | {d_sdpa.max():.3g} / {d_sdpa.mean():.3g} | {d_alone.max():.3g} / {d_alone.mean():.3g} |")
if "flash_attention_2" not in impls:
    say("\nflash-attention-2 not available here: only sdpa compared.")
say(f"\n({time.time() - t0:.0f} s)\n")
model = packed = reference = None  # free the bf16 model before the fp32 one
if device.type == "cuda":
    torch.cuda.empty_cache()

# --- 2. FSDP2 on NCCL (gloo on CPU): the sharded loss, an optimizer step and generation after it (an image prompt,
# the policy gathered once per generate call, as grpo.py does) match a plain copy of the model stepped alike
t0 = time.time()
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29531")
dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                        **({"device_id": device} if device.type == "cuda" else {}))
plain, processor = build(torch.float32)  # fp32 master weights, as sft.py and grpo.py train
model, _ = build(torch.float32)
model.load_state_dict(plain.state_dict())
prompt_record = synthetic.SyntheticRecords("test", 1, size=image_size, tasks=("report",))[0]
prompt = prompt_batch([prompt_record], processor).to(device)
stop = generation_kwargs(processor.tokenizer)
gen_tokens = 32


def row_loss(m):
    with autocast(device):
        logits = m(**model_inputs(row)).logits
    return F.cross_entropy(logits[0, :-1].float(), row["labels"][0, 1:], ignore_index=-100)


def greedy(m, gather_once=True, **kwargs):
    """Greedy tokens of the image prompt, tokens/s, and how many parameter groups FSDP2 all-gathered on the way
    (counted at FSDPParamGroup.unshard, so that one rank counts too: its "all-gather" is a local copy)."""
    calls, unshard = [0], FSDPParamGroup.unshard

    def counting(group, *args, **kw):
        calls[0] += not group.is_unsharded
        return unshard(group, *args, **kw)
    FSDPParamGroup.unshard = counting
    sync()
    start = time.time()
    with torch.no_grad(), gathered(m) if gather_once else nullcontext(), autocast(device):
        tokens = m.generate(**prompt, do_sample=False, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens,
                            **stop, **kwargs)
    sync()
    FSDPParamGroup.unshard = unshard
    return tokens, gen_tokens / (time.time() - start), calls[0]


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_reset():
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak():
    return f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if device.type == "cuda" else "-"


plain.to(device)
model.config.use_cache = plain.config.use_cache = False
wrap_fsdp(model, device)
results = {}
for name, m in (("plain", plain), ("sharded", model)):
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-4)
    peak_reset()
    loss = row_loss(m)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_peak = peak()
    with torch.no_grad():
        after = row_loss(m).item()
    peak_reset()
    tokens, tokens_per_s, gathers = greedy(m)
    results[name] = dict(loss=loss.item(), after=after, tokens=tokens, tokens_per_s=tokens_per_s, gathers=gathers,
                         grad_norm=(grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor")
                                    else grad_norm.item()),
                         step_peak=step_peak, generate_peak=peak())
    optimizer = None
with torch.no_grad():  # the way generate ran before distributed.gathered: per-token all-gathers (after a forward
    model(**prompt, use_cache=False)  # through the root, without which the vision conv meets sharded weights)
    _, per_token_speed, per_token_gathers = greedy(model, gather_once=False, synced_gpus=True)
precision = "bf16 mixed precision" if device.type == "cuda" else "fp32"
say(f"## 2. FSDP2 (1 rank, {'NCCL' if device.type == 'cuda' else 'gloo'}, {precision}): one AdamW step (lr 1e-4) "
    f"on the packed row, then {gen_tokens} greedy tokens of an image prompt\n")
say("| model | loss | grad norm | loss after the step | peak memory of the step | greedy tokens after the step "
    "= plain | generate tokens/s | parameter groups all-gathered per generate call | peak memory of generate |")
say("|---|---|---|---|---|---|---|---|---|")
for name, r in results.items():
    same = (r["tokens"].shape == results["plain"]["tokens"].shape
            and bool((r["tokens"] == results["plain"]["tokens"]).all()))
    say(f"| {name} | {r['loss']:.4f} | {r['grad_norm']:.3f} | {r['after']:.4f} | {r['step_peak']} | "
        f"{'yes' if same else 'no'} | {r['tokens_per_s']:.1f} | {r['gathers']} | {r['generate_peak']} |")
say(f"| sharded, all-gathered per token (before distributed.gathered) | | | | | | {per_token_speed:.1f} | "
    f"{per_token_gathers} | |")
say(f"\n({time.time() - t0:.0f} s)\n")
dist.destroy_process_group()
model = plain = None
if device.type == "cuda":
    torch.cuda.empty_cache()

# --- 3. throughput and memory: the two benchmark scripts on the same shape, each in its own process
if shape != "tiny":
    for title, command in [
            ("3a. SFT: packed vs padded", ["bench/bench_sft.py", f"--shape={shape}", f"--image_size={image_size}",
                                           f"--max_pixels={max_pixels}", "--max_tokens=8192", "--records=256"]),
            ("3b. GRPO step", ["bench/bench_grpo.py", f"--shape={shape}", f"--image_size={image_size}",
                               f"--max_pixels={max_pixels}", "--max_new_tokens=256", f"--steps={grpo_steps}"])]:
        t0 = time.time()
        done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
        say(f"## {title}\n\n    python {' '.join(command)}\n")
        say(done.stdout.strip() if done.returncode == 0 else "FAILED:\n" + done.stderr[-2000:])
        say(f"\n({time.time() - t0:.0f} s)\n")

os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
with open(out_file, "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"written to {out_file}")
