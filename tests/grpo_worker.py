"""Run by test_grpo.py: one GRPO step's policy updates on fixed rollouts, as one process or as one rank of a
torchrun group (FSDP2 on gloo, prompts sharded rank::world). Writes the updated parameters' checksums."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
from data import load_records  # noqa: E402
from model import full_state_dict, init_distributed, load_model, wrap_fsdp  # noqa: E402

torch.set_num_threads(1)
ckpt, data, out = sys.argv[1:4]
rank, _, world, device = init_distributed()
grpo.prompts_per_step, grpo.group_size, grpo.mini_batch, grpo.micro_batch = 4, 3, 2, 2
grpo.max_new_tokens, grpo.beta, grpo.lr = 10, 0.05, 1e-3
policy, processor = load_model(ckpt, device="cpu")
reference, _ = load_model(ckpt, device="cpu")
records = [r for r in load_records(data) if r["task"] == "report"][:4]
# identical rollouts on every rank: the same seed and the same (still unsharded) model
torch.manual_seed(0)
policy.eval()
batch, texts, n_prompt = grpo.sample_rollouts(policy, processor, records, 3, False, device, synced=False)
rewards = torch.tensor([len(t) % 5 / 4 for t in texts])
advantages = grpo.group_advantages(rewards, batch["group_ids"])
old = grpo.rollout_logprobs(policy, batch, n_prompt)
ref = grpo.rollout_logprobs(reference, batch, n_prompt)
mine = torch.tensor([p * 3 + g for p in range(rank, 4, world) for g in range(3)])
if world > 1:
    wrap_fsdp(policy)
optimizer = torch.optim.AdamW(policy.parameters(), lr=grpo.lr)
stats = grpo.policy_update(policy, optimizer, grpo.select(batch, mine), old[mine], ref[mine], advantages[mine],
                           n_prompt, world)
state = full_state_dict(policy)
if rank == 0:
    json.dump({"param_sum": sum(v.double().sum().item() for v in state.values()),
               "param_abs": sum(v.double().abs().sum().item() for v in state.values()),
               "grad_norm": stats["grad_norm"]}, open(out, "w"))
if world > 1:
    torch.distributed.destroy_process_group()
