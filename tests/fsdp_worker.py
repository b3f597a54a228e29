"""Run by test_fsdp.py: three AdamW steps of the tiny model on two fixed samples, under torchrun (one sample
per rank, FSDP2 on gloo) or as one process (both samples as two accumulated micro-batches). Writes losses."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import gray_image  # noqa: E402
from distributed import end_distributed, full_state_dict, init_distributed, wrap_fsdp  # noqa: E402
from model import build_tiny  # noqa: E402

torch.set_num_threads(1)
rank, _, world, _ = init_distributed()
model, processor = build_tiny(seed=0)
model.train()
samples = []
for i, (size, answer) in enumerate([((128, 96), "Small left pleural effusion."), ((96, 128), "No acute findings.")]):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Report?"}]},
                {"role": "assistant", "content": answer}]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=[text], images=[gray_image(*size, seed=i).convert("RGB")], return_tensors="pt")
    inputs["labels"] = inputs["input_ids"].clone()
    samples.append(dict(inputs))
if world > 1:
    wrap_fsdp(model, torch.device("cpu"))
    samples = samples[rank::world]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
losses = []
for step in range(3):
    step_loss = 0.0
    for sample in samples:
        loss = model(**sample, use_cache=False).loss / 2 * world  # mean over the two samples either way
        loss.backward()
        step_loss += loss.item() / world
    if world > 1:
        t = torch.tensor(step_loss)
        torch.distributed.all_reduce(t)
        step_loss = t.item()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(step_loss)
state = full_state_dict(model)
if rank == 0:
    json.dump({"losses": losses, "param_sum": sum(v.double().sum().item() for v in state.values())},
              open(sys.argv[1], "w"))
end_distributed()
