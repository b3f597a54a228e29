"""
SFT throughput, packed rows (what sft.py trains on) against padded batches, on the same synthetic samples:
forward + backward + AdamW step, real (non-padding) tokens per second. The padded batches hold as many
samples as fit `max_tokens` at the longest length, each padded to its longest sample: the usual collator.

    python bench/bench_sft.py                                          # CPU, the tiny model
    python bench/bench_sft.py --shape=2b --image_size=512 --max_pixels=262144 --max_tokens=8192   # 1 GPU, MFU

--shape=2b|4b|8b measures a randomly initialised model of Qwen3-VL's real size (fp32 master weights, bf16
autocast, flash-attention-2 when it imports), and its MFU against the H100/H200 bf16 dense peak.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import synthetic  # noqa: E402
from configurator import configure  # noqa: E402
from data import image_filler, model_inputs, pack_samples, tokenize_window  # noqa: E402
from data import tiny_corpus  # noqa: E402
from distributed import autocast, default_device  # noqa: E402
from model import build_random, build_tiny  # noqa: E402

shape = ""                # "": the tiny model; "2b" / "4b" / "8b": a random model of that Qwen3-VL size
records = 1024            # synthetic training records (the SFT mix)
max_tokens = 1024         # tokens per packed row, and the token budget of a padded batch
rows_per_step = 4         # micro-steps per optimizer step, in both modes
image_size = 128
max_pixels = 16384
configure(globals())

device = default_device()
if shape:
    model, processor = build_random(shape, device=device, max_pixels=max_pixels)
else:
    model, processor = build_tiny(texts=tiny_corpus(), max_pixels=max_pixels)
model.to(device).train()
model.config.use_cache = False
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
filler = image_filler(processor)
samples, problems = tokenize_window(synthetic.SyntheticRecords("train", records, size=image_size), range(records),
                                    processor, max_tokens - len(filler["input_ids"]))
lengths = [len(s["input_ids"]) for s in samples]
pad_id = processor.tokenizer.pad_token_id


def padded_batch(batch):
    """Right-padded tensors of several samples, with the attention mask that tells the model where they end."""
    longest = max(len(s["input_ids"]) for s in batch)
    pad = lambda t, value: F.pad(t, (0, longest - len(t)), value=value)  # noqa: E731
    out = {"input_ids": torch.stack([pad(s["input_ids"], pad_id) for s in batch]),
           "labels": torch.stack([pad(s["labels"], -100) for s in batch]),
           "mm_token_type_ids": torch.stack([pad(s["mm_token_type_ids"], 0) for s in batch]),
           "attention_mask": torch.stack([pad(torch.ones_like(s["input_ids"]), 0) for s in batch])}
    with_image = [s for s in batch if "pixel_values" in s]
    if with_image:
        out["pixel_values"] = torch.cat([s["pixel_values"] for s in with_image])
        out["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in with_image])
    return out


def train(batches, inputs_of):
    """Seconds for forward + backward over every batch, an optimizer step every rows_per_step of them."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device):
            logits = model(**inputs_of(batch)).logits
        labels = batch["labels"]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        if (i + 1) % rows_per_step == 0 or i == len(batches) - 1:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.time() - t0


rows, too_long = pack_samples(samples, model, max_tokens, filler)
per_batch = max(1, max_tokens // max(lengths))
padded = [padded_batch(samples[i:i + per_batch]) for i in range(0, len(samples), per_batch)]
train(rows[:2], model_inputs)  # warm-up: kernels, allocator
results = {"packed": (train(rows, model_inputs), sum(r["input_ids"].numel() for r in rows)),
           "padded": (train(padded, lambda b: {k: v for k, v in b.items() if k != "labels"} | {"use_cache": False}),
                      sum(b["input_ids"].numel() for b in padded))}
n_params = sum(p.numel() for p in model.parameters())
print(f"{len(samples)} samples ({len(problems)} too long), {sum(lengths)} real tokens, "
      f"mean {sum(lengths) / len(lengths):.0f} / max {max(lengths)}; {shape or 'tiny'} model, "
      f"{n_params / 1e6:.1f} M parameters, {device.type}"
      f"{', ' + model.config._attn_implementation if device.type == 'cuda' else ''}\n")
print("| batches | rows | tokens computed | real / computed | real tokens/s | s | MFU |")
print("|---|---|---|---|---|---|---|")
for name, (seconds, computed) in results.items():
    n = len(rows) if name == "packed" else len(padded)
    mfu = f"{6 * n_params * sum(lengths) / seconds / 989e12:.1%}" if device.type == "cuda" else "-"  # real tokens
    print(f"| {name} | {n} x {max_tokens if name == 'packed' else f'{per_batch} samples'} | {computed} | "
          f"{sum(lengths) / computed:.1%} | {sum(lengths) / seconds:.0f} | {seconds:.1f} | {mfu} |")
print(f"\npacked / padded real tokens per second: {results['padded'][0] / results['packed'][0]:.2f}")
