"""Run by test_grpo.py as one process or as each rank of a 2-process torchrun (FSDP2 on gloo): load the policy (on
2 ranks only rank 0 reads the weights: the other ranks get a copy of the folder without them), sample rollouts from
it with the same seed on every rank, make one GRPO step's updates with the prompts sharded rank::world, then
generate greedily from the updated policy. Writes what the test compares between 1 and 2 processes."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402
import grpo  # noqa: E402
from data import generation_kwargs, prompt_batch  # noqa: E402
from distributed import end_distributed, full_state_dict, gathered, init_distributed, wrap_fsdp  # noqa: E402
from model import load_model  # noqa: E402
from records import load_records  # noqa: E402

torch.set_num_threads(1)
ckpt, weightless, data, out = sys.argv[1:5]
rank, _, world, device = init_distributed()
loss_settings = dict(beta=0.05, eps_low=0.2, eps_high=0.28, dual_clip=3.0, loss_agg="token-mean", max_new_tokens=10)
path = ckpt if rank == 0 else weightless
policy, processor = load_model(path, device="cpu", rank0_only=world > 1)
reference, _ = load_model(path, device="cpu", rank0_only=world > 1)
if world > 1:
    wrap_fsdp(policy, device)
    wrap_fsdp(reference, device)
optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)  # FSDP2: before any forward registers unsharded ones
loaded = full_state_dict(policy)
records = [r for r in load_records(data) if r["task"] == "report"][:4]

torch.manual_seed(0)  # the same seed on every rank: the same rollouts as one process, if sharded sampling is right
policy.eval()
eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")  # a bias towards EOS while sampling: answers of
hook = policy.lm_head.register_forward_hook(  # several lengths, so that the three loss aggregations differ
    lambda module, inputs, logits: logits + 4.0 * torch.nn.functional.one_hot(torch.tensor(eos), logits.shape[-1]))
rollouts, texts = engine.sample_rollouts(policy, processor, records, 3, False, device, max_new_tokens=10)
hook.remove()
rewards = torch.tensor([len(t) % 5 / 4 for t in texts])
advantages = grpo.group_advantages(rewards, rollouts.group_ids)
old = engine.answer_logprobs(policy, rollouts, micro_batch=2)
ref = engine.answer_logprobs(reference, rollouts, micro_batch=2)
mine = torch.tensor([p * 3 + g for p in range(rank, 4, world) for g in range(3)])

# before each training forward: do the trainable parameters hold gradients from the micro-batches before it?
grads_held, training_logprobs = [], grpo.training_logprobs


def watching(model, *args, **kwargs):
    if torch.is_grad_enabled():
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        grads_held.append({"all": all(g is not None for g in grads), "none": all(g is None for g in grads),
                           "sharded": world > 1 and all(g.to_local().numel() < g.numel() for g in grads
                                                        if g is not None and g.shape[0] >= world)})
    return training_logprobs(model, *args, **kwargs)


grpo.training_logprobs = watching
stats = grpo.policy_update(policy, optimizer, rollouts.rows(mine), old[mine], ref[mine], advantages[mine], world=world,
                           n_updates=2, micro_batch=2, grad_clip=1.0, loss_settings=loss_settings)
grpo.training_logprobs = training_logprobs

# greedy answers of the updated policy, and the all-gathers FSDP2 makes for one generate call of each length
prompt = prompt_batch(records[:1], processor)
counts, all_gather = {}, dist.all_gather_single


def counting(*args, **kwargs):
    counts[length] += 1
    return all_gather(*args, **kwargs)


dist.all_gather_single = counting
answers = {}
for length in (4, 12):
    counts[length] = 0
    with torch.no_grad(), gathered(policy):
        sequences = policy.generate(**prompt, do_sample=False, max_new_tokens=length, min_new_tokens=length,
                                    **generation_kwargs(processor.tokenizer))
    answers[length] = sequences[0, prompt["input_ids"].shape[1]:].tolist()
dist.all_gather_single = all_gather

# the other two loss aggregations, each from the starting weights: sequence mean (the original GRPO) and Dr.GRPO's
# constant normalizer, whose normalizers also run over every rank's sequences
others = {}
for loss_agg in ("seq-mean", "constant"):
    fresh, _ = load_model(path, device="cpu", rank0_only=world > 1)
    if world > 1:
        wrap_fsdp(fresh, device)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    agg_stats = grpo.policy_update(fresh, fresh_optimizer, rollouts.rows(mine), old[mine], ref[mine],
                                   advantages[mine], world=world, n_updates=2, micro_batch=2, grad_clip=1.0,
                                   loss_settings={**loss_settings, "loss_agg": loss_agg})
    fresh_state = full_state_dict(fresh)
    others[loss_agg] = {"grad_norm": agg_stats["grad_norm"],
                        "param_sum": sum(v.double().sum().item() for v in fresh_state.values()) if rank == 0 else None}

state = full_state_dict(policy)
if rank == 0:
    plain, _ = load_model(ckpt, device="cpu")
    json.dump({"loaded_equals_file": all(torch.equal(loaded[k], v) for k, v in plain.state_dict().items()),
               "rollouts": rollouts.input_ids.tolist(), "texts": texts,
               "param_sum": sum(v.double().sum().item() for v in state.values()),
               "param_abs": sum(v.double().abs().sum().item() for v in state.values()),
               "grad_norm": stats["grad_norm"], "ratio_max": stats["ratio_max"],
               "grads_held": grads_held, "answers": answers, "other_losses": others,
               "all_gathers": counts, "n_fsdp_modules": sum(hasattr(m, "unshard") for m in policy.modules()),
               "timeout_s": dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
               .options._timeout.total_seconds() if world > 1 else None}, open(out, "w"))
end_distributed()
