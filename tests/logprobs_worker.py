"""Run by test_logprobs.py as one process or as each rank of a 2-process torchrun (FSDP2 on gloo): the chunked
log-probs of model.next_token_logprobs against the full-logits path on the same model, for a GRPO-style batch
(left-padded image prompts, answers) and an SFT packed row, values and every parameter's gradient. Writes the
largest differences."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import model_inputs, pack_samples, prompt_batch, tokenize_sample  # noqa: E402
from distributed import end_distributed, init_distributed, wrap_fsdp  # noqa: E402
from model import build_tiny, next_token_logprobs  # noqa: E402
from records import load_records  # noqa: E402

torch.set_num_threads(1)
data, out = sys.argv[1:3]
rank, _, world, device = init_distributed()
model, processor = build_tiny(seed=0)
if world > 1:
    wrap_fsdp(model, device)
model.train()
records = load_records(data)[:4]
weights = torch.Generator().manual_seed(0)

# a GRPO batch: the prompts of two records, left-padded, each followed by 9 random answer tokens
prompt = prompt_batch(records[:2], processor)
answers = torch.randint(0, len(processor.tokenizer) - 30, (2, 9), generator=weights)
grpo_inputs = {"input_ids": torch.cat([prompt["input_ids"], answers], 1),
               "attention_mask": torch.cat([prompt["attention_mask"], torch.ones_like(answers)], 1),
               "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(answers)], 1),
               "pixel_values": prompt["pixel_values"], "image_grid_thw": prompt["image_grid_thw"], "use_cache": False}
grpo_wanted = torch.zeros_like(grpo_inputs["input_ids"], dtype=torch.bool)
grpo_wanted[:, prompt["input_ids"].shape[1]:] = True
# an SFT row: four records packed together
row = pack_samples([tokenize_sample(r, processor) for r in records], model, 4096)[0][0]


def full_logits_path(inputs, wanted, temperature):
    """What next_token_logprobs replaces: every position's logits, log-softmax, the chosen tokens'."""
    logits = model(**inputs).logits[:, :-1].float() / temperature
    logprobs = torch.log_softmax(logits, -1)
    chosen = logprobs.gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)[wanted[:, 1:]]
    return chosen, -(logprobs.exp() * logprobs).sum(-1)[wanted[:, 1:]]


def values_and_grads(compute, inputs, wanted, temperature):
    model.zero_grad(set_to_none=True)
    chosen, entropy = compute(inputs, wanted, temperature)
    mix = torch.randn(len(chosen), generator=torch.Generator().manual_seed(1))  # a loss weighing every token
    (chosen * mix).sum().backward()
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in model.named_parameters() if p.grad is not None}
    return chosen.detach(), entropy.detach(), grads


results = {}
for name, inputs, wanted, temperature in (("grpo", grpo_inputs, grpo_wanted, 0.7),
                                          ("sft", model_inputs(row), row["labels"] != -100, 1.0)):
    full = values_and_grads(full_logits_path, inputs, wanted, temperature)
    chunked = values_and_grads(lambda i, w, t: next_token_logprobs(model, i, w, t, chunk=5), inputs, wanted,
                               temperature)
    results[name] = {"n": len(full[0]), "n_grads": [len(full[2]), len(chunked[2])],
                     "value": (full[0] - chunked[0]).abs().max().item(),
                     "entropy": (full[1] - chunked[1]).abs().max().item(),
                     "grad": max((full[2][n] - chunked[2][n]).abs().max().item() for n in full[2]),
                     "grad_scale": max(g.abs().max().item() for g in full[2].values())}
if rank == 0:
    json.dump(results, open(out, "w"))
end_distributed()
