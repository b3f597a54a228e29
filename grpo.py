"""
grpo.py: stage 3, Group Relative Policy Optimization with clinically grounded rewards.

Each step takes P prompts (report generation and/or grounding), samples G answers per prompt from the
current policy, scores them (reports: label F1 offline by default, -RadCliQ with the paper's metric models;
grounding: soft-F1 of Hungarian-matched IoU), and pushes up the answers that beat their own group:

    A_i       = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)                 group-relative advantage
    rho_i,t   = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t)
    J(theta)  = 1/sum_i|o_i| sum_i sum_t [ min(rho_i,t A_i, clip(rho_i,t, 1-eps_low, 1+eps_high) A_i)
                                           - beta KL_k3(pi_theta || pi_ref)_i,t ]
    KL_k3     = exp(l_ref - l) - (l_ref - l) - 1,  l = log pi_theta(o_i,t), l_ref = log pi_ref(o_i,t)

with the paper's settings: eps_low 0.2 / eps_high 0.28 ("clip-higher"), dual clip c = 3 for negative
advantages, beta 0.01 against the frozen starting model, token-mean over the mini-batch, several optimizer
updates per rollout batch (so pi_old is computed once, right after generation: logprobs_before_update). The
rollouts and their log-probs come from engine.py. The variants people bring from TRL, verl and EasyR1, each a setting
of the same name, off by default:

    ratio_level=sequence  GSPO: rho_i,t = exp(1/|o_i| sum_t' log rho_i,t'), one length-normalized ratio per answer
    tis_cap=C             TIS: each token's policy-gradient term times min(pi_old / pi_rollout, C), where pi_rollout
                          is what generate sampled from (log-probs kept while sampling) and pi_old what the training
                          forward recomputes; they differ by kernels, bf16 and the KV cache (logged: mismatch_kl)
    overlong=mask         answers cut at max_new_tokens (no EOS) weigh 0 in the sum and in its normalizer (DAPO)
    filter_groups=k       draw k x P prompts, keep the first P groups whose G rewards spread (std > 1e-6): DAPO's
                          dynamic sampling, which tests the spread, not the mean, so a negative reward works too

Two more settings, also off by default: freeze_vision=True keeps the vision tower (blocks and mergers) fixed, with no
gradients and no AdamW state (as in sft.py); log_rollouts=N writes the first N groups of rank 0's share of each step to
out_dir/rollouts.jsonl, one line a group (question, gold answer, image, and each answer's text, reward with its
components, advantage, length and truncation), which `python sample.py --rollouts=out/grpo/rollouts.jsonl --step=10`
draws.

    python grpo.py                                                     # CPU, after `python sft.py`
    python grpo.py --task=grounding --thinking=True --init_from=out/coldstart/model --max_new_tokens=224
    python grpo.py config/grpo_report_paper.py --init_from=RadVLM-8B   # 1 GPU (small P for memory)
    torchrun --nproc_per_node=8 grpo.py config/grpo_report_paper.py --init_from=RadVLM-8B

Why the loss printed is ~0: on-policy, the surrogate's value is sum(A)=0 by construction; its gradient
is not. Watch reward_mean, kl, clip_frac (_low / _high: which side clipped), ratio_max, response_length,
truncated_frac, zero_var_frac and mismatch_kl instead, and val_reward_* (greedy answers to fixed held-out prompts every
eval_every steps, grounding always scored by soft-F1): the sampled reward of one step is a noisy measure.
Deliberately left out: vLLM rollouts (HF generate with a KV cache instead, slower but one code path), overlong
reward shaping (only masking), entropy bonus (0 in the paper), a value model (that is PPO).
"""

import json
import os
import time

import torch
from tqdm import tqdm

from checkpoints import changed_on_resume, latest_checkpoint, resume_training_checkpoint, save_training_checkpoint
from configurator import configure
from data import epoch_order, open_records, tiny_corpus
from distributed import all_reduce_mean, compute_dtype, end_distributed, init_distributed, print0, wrap_fsdp
from engine import answer_logprobs, sample_rollouts, training_logprobs
from evaluate import held_out_prompts, held_out_rewards
from logs import RunLog, open_training_log
from model import load_model
from records import TASK_GROUPS, question, record_id, reference_answer, task_of
import rewards

# model and data
init_from = "out/sft"     # the starting policy: a training output dir (its latest step), checkpoint dir or hub id
task = "both"             # "report", "grounding" or "both" (steps alternate between the two)
data = "synthetic"        # "synthetic" or a RadVLM/LLaVA .json/.jsonl file with report / grounding records
n_train = 20000           # synthetic prompts to draw from (ignored for files)
image_size = 128          # side of the synthetic images in pixels
min_pixels = 1024         # processor pixel budget (the paper: 1,024 .. 451,584 at RL and evaluation)
max_pixels = 16384
thinking = False          # ask for <think>...</think> first; rewards score only the answer after it
report_reward = "label_f1"  # label_f1 | radcliq | bertscore | radgraph | gleu | bleu4 | positive_f1 (rewards.py)
metric_weights = ""       # folder of the model-based rewards' weights (radcliq and its ablations), see scorers.py
grounding_reward = "soft_f1"  # soft_f1 (the paper's) | hit: 1 if each gold box is hit at IoU >= 0.5, none extra, else 0
# rollouts
prompts_per_step = 16     # P: prompts per step over all ranks
group_size = 8            # G: samples per prompt
max_new_tokens = 96       # longest answer (the paper: 1024 reports, 4096 grounding/thinking)
temperature = 1.0
top_p = 1.0
generate_batch = 0        # prompts per generate call on each rank (0: all at once); bounds the KV cache
# optimization
mini_batch = 8            # prompts per optimizer update (P / mini_batch updates per step)
micro_batch = 16          # sequences per forward/backward (memory only; the update is the same)
lr = 5e-5                 # constant (the paper: 1e-6 on 8B)
weight_decay = 0.01
grad_clip = 1.0           # clip the global gradient norm (0: off)
grad_checkpointing = False  # recompute activations in the backward pass (needed for long answers on real models)
freeze_vision = False     # keep the vision tower (blocks and mergers) fixed: no gradients, no AdamW state, as in sft.py
beta = 0.01               # KL weight; 0 loads no reference model at all
eps_low = 0.2
eps_high = 0.28
dual_clip = 3.0           # bound on the loss of negative-advantage tokens with huge ratios (0: off)
loss_agg = "token-mean"   # token-mean | seq-mean (original GRPO) | constant (Dr.GRPO: / (n_seqs * max_new_tokens))
scale_std = True          # divide advantages by the group std (False: Dr.GRPO)
ratio_level = "token"     # token (GRPO) | sequence (GSPO: one length-normalized ratio per answer)
tis_cap = 0.0             # truncated importance sampling: weigh by min(pi_old / pi_rollout, tis_cap) (0: off)
filter_groups = 0         # DAPO dynamic sampling: draw k x P prompts, keep P groups whose rewards spread (0: off)
overlong = "keep"         # keep | mask: answers cut at max_new_tokens are left out of the loss (DAPO)
log_rollouts = 0          # groups per step written to out_dir/rollouts.jsonl: the first N of rank 0's share (0: off)
max_steps = 100           # steps to train (0 is refused: prompts never run out, so there is no end of the data)
eval_every = 25           # greedy reward on fixed held-out prompts every N steps and at the end (0: never)
n_eval = 64               # held-out prompts per task for that, from val_data
val_data = "synthetic"    # held-out records: "synthetic" (its val split), a file, or "" for none
# system
out_dir = "out/grpo"
save_every = 20           # checkpoint every N steps and at the end (0: never, for benchmarks)
keep_last = 2             # step folders to keep (0: all); 2 or more leave one to fall back on if the newest is corrupt
resume = False
seed = 0
wandb_log = False         # also log every row of log.jsonl to Weights & Biases, and a table of answers (logs.py)
wandb_project = "radvlm-grpo"
wandb_run_name = ""       # default: the out_dir's name
WANDB_GROUPS = 2          # groups of rank 0's share each step in W&B's table of sampled answers
# what a resumed run may change (any other change stops it): its length (the rate is constant: no schedule moves) and
# what only decides when to evaluate, save or log, and how much memory generation and the update take
MAY_CHANGE_ON_RESUME = {"max_steps", "eval_every", "save_every", "keep_last", "log_rollouts", "n_eval",
                        "generate_batch", "micro_batch", "grad_checkpointing", "wandb_log", "wandb_project",
                        "wandb_run_name"}


# ---------------------------------------------------------------------------------------------------
# the math: advantages, KL, loss

def group_advantages(rewards, group_ids, scale_std=True, eps=1e-6):
    """(r - mean of its group) / (std of its group + eps); a group whose rewards are all equal gets zeros."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    group_ids = torch.as_tensor(group_ids)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    count = torch.zeros(n_groups).index_add_(0, inverse, torch.ones_like(rewards))
    mean = torch.zeros(n_groups).index_add_(0, inverse, rewards) / count
    var = torch.zeros(n_groups).index_add_(0, inverse, (rewards - mean[inverse]) ** 2) / (count - 1).clamp(min=1)
    advantages = rewards - mean[inverse]
    if scale_std:
        advantages = advantages / (var.sqrt()[inverse] + eps)
    return advantages


def kl_k3(logprobs, ref_logprobs):
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: >= 0, unbiased, low variance. The log-ratio is
    clamped before exp (verl's fix for NaNs when a token's probabilities differ by e^20 or more)."""
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return (log_ratio.exp() - log_ratio - 1).clamp(max=10.0)


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, *, beta=0.01, eps_low=0.2, eps_high=0.28,
              dual_clip=3.0, loss_agg="token-mean", max_new_tokens=None, normalizer=None, ratio_level="token",
              tis_weights=None):
    """The negative GRPO objective above for a batch of sequences ([B, T] per-token tensors, [B] advantages), with
    the variants of the docstring: ratio_level, and tis_weights (min(pi_old / pi_rollout, cap) per token, or None).

    `normalizer` overrides the token count of token-mean (the whole mini-batch over all ranks and micro-batches,
    so that splitting it changes nothing). Returns (loss, stats)."""
    adv = advantages[:, None]
    if ratio_level == "token":
        ratio = torch.exp(logprobs - old_logprobs)
    elif ratio_level == "sequence":  # GSPO: the answer's mean log-ratio, the same for all its tokens
        log_ratio = ((logprobs - old_logprobs) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        ratio = torch.exp(log_ratio).expand_as(logprobs)
    else:
        raise ValueError(f"unknown ratio_level {ratio_level!r}")
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)  # the pessimistic (min of objectives) branch
    if dual_clip > 0:  # a negative advantage times a huge ratio is bounded by -A * c
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    if tis_weights is not None:  # the tokens were sampled by pi_rollout, not pi_old: reweigh, capped
        pg = pg * tis_weights
    kl = kl_k3(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(pg)
    per_token = pg + beta * kl
    mask = mask.float()
    if loss_agg == "token-mean":
        loss = (per_token * mask).sum() / (normalizer if normalizer is not None else mask.sum().clamp(min=1))
    elif loss_agg == "seq-mean":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss = per_seq.sum() / (normalizer if normalizer is not None else len(per_seq))
    elif loss_agg == "constant":
        loss = (per_token * mask).sum() / ((normalizer if normalizer is not None else mask.shape[0]) * max_new_tokens)
    else:
        raise ValueError(f"unknown loss_agg {loss_agg!r}")
    with torch.no_grad():
        clipped = pg_clipped > pg_unclipped
        n = mask.sum().clamp(min=1)
        fraction = lambda where: (where.float() * mask).sum() / n  # noqa: E731
        stats = {"kl": (kl * mask).sum() / n, "clip_frac": fraction(clipped),
                 "clip_frac_low": fraction(clipped & (ratio < 1)), "clip_frac_high": fraction(clipped & (ratio > 1)),
                 "ratio_max": (ratio * mask).max()}
    return loss, stats


def tis_weights(old_logprobs, sampled_logprobs, cap):
    """TIS: each token's min(pi_old / pi_rollout, cap), pi_rollout being what generation drew it with."""
    return (old_logprobs - sampled_logprobs).exp().clamp(max=cap)


def loss_tokens(answer_mask, truncated, mask_overlong=False):
    """The tokens the loss covers: every answer token, or with mask_overlong (DAPO) only those of the answers that ended
    before max_new_tokens."""
    return answer_mask & ~truncated[:, None] if mask_overlong else answer_mask


# ---------------------------------------------------------------------------------------------------
# pi_old and the update

def logprobs_before_update(policy, rollouts, n_updates, micro_batch, temperature=1.0):
    """pi_old: the policy's log-probs of the sampled answers before this step's first update, the denominator of
    every update's ratio. The first mini-batch's come from the very computation its update runs (training_logprobs,
    micro-batch by micro-batch, here without gradients), so that its ratios are exactly 1, as on-policy they are; the
    later mini-batches' from the cheaper pass from each prompt's KV cache (answer_logprobs), equal within rounding."""
    n, device = len(rollouts.group_ids), rollouts.group_ids.device
    first = n // n_updates
    later = answer_logprobs(policy, rollouts.rows(torch.arange(first, n, device=device)), micro_batch, temperature)
    with torch.no_grad():
        policy.train()  # the mode of the update's forward
        firsts = [training_logprobs(policy, rollouts.rows(torch.arange(start, min(first, start + micro_batch),
                                                                       device=device)), temperature)[0]
                  for start in range(0, first, micro_batch)]
    return torch.cat(firsts + [later])


def policy_update(policy, optimizer, rollouts, old_logprobs, ref_logprobs, advantages, *, world, n_updates,
                  micro_batch, grad_clip, loss_settings, mask_overlong=False, tis_cap=0.0, temperature=1.0):
    """`n_updates` optimizer steps over this rank's rollouts, each over one mini-batch of its prompts' groups,
    gradients accumulated over micro-batches; the loss covers every answer token, or with mask_overlong only those of
    answers that ended (DAPO); `loss_settings` are grpo_loss's (beta, eps_low, eps_high, dual_clip, loss_agg,
    max_new_tokens, ratio_level). Returns kl / clip fractions / entropy averaged over micro-batches, the loss, the
    last update's gradient norm and the largest ratio pi_theta / pi_old of any answer token of any update (all
    ranks)."""
    policy.train()
    loss_mask = loss_tokens(rollouts.answer_mask, rollouts.truncated, mask_overlong)
    seqs_per_update = len(advantages) // n_updates
    sums = {"kl": 0.0, "clip_frac": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "entropy": 0.0, "loss": 0.0}
    n_micro, ratio_max = 0, 0.0
    for u in range(n_updates):
        update_idx = torch.arange(u * seqs_per_update, (u + 1) * seqs_per_update, device=advantages.device)
        mask = loss_mask[update_idx]
        # the mini-batch's normalizer over all ranks, so that micro-batching and sharding change nothing;
        # divided by world because FSDP averages the gradients of the ranks
        token_mean = loss_settings["loss_agg"] == "token-mean"
        norm = torch.tensor([float(mask.sum()) if token_mean else float(len(update_idx))], device=advantages.device)
        if world > 1:
            torch.distributed.all_reduce(norm)
        norm = max(norm.item(), 1.0) / world  # no token at all (every answer masked as overlong): a zero loss
        # FSDP2 reduce-scatters every micro-batch's gradients into the shards: skipping that until the last
        # micro-batch (set_requires_gradient_sync(False)) would hold a whole unsharded fp32 gradient per rank
        for start in range(0, seqs_per_update, micro_batch):
            idx = update_idx[start:start + micro_batch]
            logprobs, entropy = training_logprobs(policy, rollouts.rows(idx), temperature)
            tis = tis_weights(old_logprobs[idx], rollouts.sampled_logprobs[idx], tis_cap) if tis_cap > 0 else None
            loss, stats = grpo_loss(logprobs, old_logprobs[idx], None if ref_logprobs is None else ref_logprobs[idx],
                                    advantages[idx], loss_mask[idx], normalizer=norm, tis_weights=tis,
                                    **loss_settings)
            if not torch.isfinite(loss) or not torch.isfinite(stats["kl"]):
                raise SystemExit(f"non-finite loss or KL in update {u + 1} (kl {stats['kl'].item()})")
            loss.backward()
            m = loss_mask[idx].float()
            for key in ("kl", "clip_frac", "clip_frac_low", "clip_frac_high"):
                sums[key] += stats[key].item()
            sums["entropy"] += ((entropy * m).sum() / m.sum().clamp(min=1)).item()
            sums["loss"] += loss.item()
            ratio_max = max(ratio_max, stats["ratio_max"].item())
            n_micro += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = {k: v / n_micro for k, v in sums.items() if k != "loss"}
    ratio_max = torch.tensor([ratio_max], device=advantages.device)
    if world > 1:  # the largest over all ranks (step_log then averages equal values)
        torch.distributed.all_reduce(ratio_max, op=torch.distributed.ReduceOp.MAX)
    return {**out, "loss": sums["loss"], "grad_norm": grad_norm.item(), "ratio_max": ratio_max.item()}


# ---------------------------------------------------------------------------------------------------
# prompts, held-out rewards, logging

def prompt_pools(data, step_tasks, split, n, image_size):
    """{step task: {record task: its records}}: the prompts a step of each task draws from."""
    pools = {}
    for step_task in step_tasks:
        pools[step_task] = {t: open_records(data, split, n, image_size, tasks=(t,), scored=True)
                            for t in TASK_GROUPS[step_task]}
        pools[step_task] = {t: pool for t, pool in pools[step_task].items() if len(pool)}
        if not pools[step_task]:
            raise SystemExit(f"no {step_task} records in {data}")
    return pools


def step_prompts(pools, step, n_step_tasks, prompts_per_step, seed):
    """This step's prompts: the same share from each record task every step (anatomy is easy, abnormalities hard:
    with a random mix a step's mean reward would swing with the mix), each a deterministic walk through shuffled
    epochs of that task's pool."""
    prompts = []
    for j, pool in enumerate(pools.values()):
        share = prompts_per_step // len(pools) + (j < prompts_per_step % len(pools))
        epoch, offset = divmod(step // n_step_tasks * share, len(pool))
        order = epoch_order(len(pool), seed, epoch)[offset:] + epoch_order(len(pool), seed, epoch + 1)
        prompts += [pool[i] for i in order[:share]]
    return prompts


def groups_with_spread(reward_list, group_ids, n_keep, eps=1e-6):
    """The rows of the first n_keep groups whose rewards spread (std > eps), topped up with the first groups that do
    not if too few do (their advantages are 0: they add only the KL term), and how many groups were drawn until the
    n_keep-th one with spread was found (all of them if it never was)."""
    groups = list(dict.fromkeys(group_ids))
    rows = {g: [j for j, h in enumerate(group_ids) if h == g] for g in groups}
    spread = [g for g in groups if torch.tensor([reward_list[j] for j in rows[g]]).std() > eps]
    drawn = groups.index(spread[n_keep - 1]) + 1 if len(spread) >= n_keep else len(groups)
    keep = (spread + [g for g in groups if g not in spread])[:n_keep]
    return [j for g in sorted(keep, key=groups.index) for j in rows[g]], drawn


def health(rollouts, old_logprobs, prompts_drawn):
    """Signals that tell a healthy run from a broken one: answers cut at max_new_tokens, how far the log-probs
    generate sampled with are from the training forward's (k3 estimate of KL(pi_rollout || pi_old), per token),
    and the prompts drawn to fill the step (all ranks)."""
    mask = rollouts.answer_mask.float()
    mismatch = kl_k3(rollouts.sampled_logprobs, old_logprobs)
    return {"truncated_frac": rollouts.truncated.float().mean().item(),
            "mismatch_kl": ((mismatch * mask).sum() / mask.sum().clamp(min=1)).item(), "prompts_drawn": prompts_drawn}


def step_log(step_task, records, reward_list, components, rollouts, stats, times, record_tasks, world):
    """One log.jsonl line's values, averaged over ranks: rewards (per record task too), their spread, lengths,
    the update's statistics and times."""
    reward_t = torch.tensor(reward_list, dtype=torch.float32)
    group_ids = rollouts.group_ids.cpu()
    group_std = torch.stack([reward_t[group_ids == g].std() for g in group_ids.unique()])
    log = {f"reward_{step_task}": reward_t.mean().item(), "reward_mean": reward_t.mean().item(),
           "reward_std": reward_t.std().item(), "zero_var_frac": (group_std < 1e-6).float().mean().item(),
           "response_length": rollouts.answer_mask.sum(1).float().mean().item(), **stats,
           **{f"{step_task}_{k}": sum(v) / len(v) for k, v in components.items() if k != step_task},
           **{f"time_{k}": v for k, v in times.items()}}
    log = all_reduce_mean(log)
    if len(record_tasks) > 1:  # the mean reward of each record task: sums and counts over all ranks
        sums, counts = [0.0] * len(record_tasks), [0.0] * len(record_tasks)
        for r, g in zip(reward_list, group_ids.tolist()):
            k = record_tasks.index(task_of(records[g]))
            sums[k], counts[k] = sums[k] + r, counts[k] + 1
        totals = torch.tensor([sums, counts], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(totals)
        log.update({f"reward_{t}": s / max(c, 1) for t, s, c in zip(record_tasks, *totals.tolist())})
    return log


def rollout_lines(step, records, completions, reward_list, components, advantages, rollouts, n_groups, image_size):
    """rollouts.jsonl's lines of the first `n_groups` groups of this rank's batch: each prompt (id, task, question,
    gold answer, image: a file's path, and for a synthetic study made in memory its seed and size) with its G answers,
    their rewards and the reward's components, advantages, lengths in tokens (the EOS included) and whether they ran
    out of tokens."""
    group_ids, advantages = rollouts.group_ids.tolist(), advantages.tolist()
    lengths, truncated = rollouts.answer_mask.sum(1).tolist(), rollouts.truncated.tolist()
    lines = []
    for g in list(dict.fromkeys(group_ids))[:n_groups]:
        record = records[g]
        image = {"image": record.get("image")}
        if record.get("image_array") is not None:  # not in a file: synthetic.study_of makes it again
            image.update(study_seed=record["study_seed"], image_size=image_size)
        answers = [dict(text=completions[j], reward=reward_list[j], components={k: v[j] for k, v in components.items()},
                        advantage=advantages[j], length=lengths[j], truncated=truncated[j])
                   for j, h in enumerate(group_ids) if h == g]
        lines.append({"step": step, "id": record_id(record), "task": task_of(record), "prompt": question(record),
                      "reference": reference_answer(record), **image, "completions": answers})
    return lines


def load_policy_and_reference(init_from, beta, grad_checkpointing, device, world, min_pixels, max_pixels, seed,
                              freeze_vision=False):
    """The trained policy in fp32 (master weights; bf16 compute on GPU: an update of lr 1e-6 is below a bf16
    weight's precision), its frozen starting point for the KL term (None when beta is 0; bf16 on GPU is enough),
    both sharded over the ranks, and the processor. On N ranks only rank 0 reads the weights (distributed.wrap_fsdp).
    With freeze_vision the policy's vision tower requires no gradient (set before sharding, as in sft.py)."""
    def load(dtype):
        return load_model(init_from, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                          rank0_only=world > 1, seed=seed, tiny_corpus=tiny_corpus)
    try:
        policy, processor = load(torch.float32)
    except (OSError, RuntimeError) as e:
        raise SystemExit(f"cannot load the starting policy {init_from!r} ({e}).\n"
                         f"Run `python sft.py` first, or pass --init_from=CHECKPOINT_DIR (or --init_from=tiny).")
    if grad_checkpointing:
        policy.gradient_checkpointing_enable()
    policy.model.visual.requires_grad_(not freeze_vision)
    reference = load(None)[0].eval().requires_grad_(False) if beta > 0 else None
    for model in [m for m in (policy, reference) if m is not None]:
        if world > 1:
            wrap_fsdp(model, device)
        else:
            model.to(device)
    return policy, reference, processor


def main():
    settings = configure(globals())
    rank, _, world, device = init_distributed()
    master = rank == 0
    torch.manual_seed(seed + rank)  # each rank samples differently; resume restores every rank's RNG
    if max_steps < 1:
        raise SystemExit(f"--max_steps={max_steps}: GRPO needs a number of steps (its prompts never run out)")
    if prompts_per_step % world or (prompts_per_step // world) % max(1, mini_batch // world) or mini_batch % world:
        raise SystemExit(f"prompts_per_step={prompts_per_step} and mini_batch={mini_batch} must split evenly over "
                         f"{world} ranks, and mini_batch must divide prompts_per_step")
    step_tasks = ["report", "grounding"] if task == "both" else [task]  # "both": steps alternate between them
    pools = prompt_pools(data, step_tasks, "train", n_train, image_size)  # before the model: bad data stops at once
    policy, reference, processor = load_policy_and_reference(init_from, beta, grad_checkpointing, device, world,
                                                             min_pixels, max_pixels, seed, freeze_vision)
    # only what trains: a frozen vision tower gets no AdamW moments
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay, betas=(0.9, 0.999), fused=device.type == "cuda")
    loss_settings = dict(beta=beta, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, loss_agg=loss_agg,
                         max_new_tokens=max_new_tokens, ratio_level=ratio_level)
    # the same held-out prompts at every evaluation, this rank's share of them
    eval_sets = (held_out_prompts(val_data, n_eval, image_size, step_tasks, rank, world) if eval_every and val_data
                 else {})

    step = 0
    resumed_from, state = resume_training_checkpoint(out_dir, policy, optimizer) if resume else (None, None)
    if state:
        step = state["step"]
        changed = changed_on_resume(state["settings"], settings, MAY_CHANGE_ON_RESUME)
        print0(f"resumed from {resumed_from} at step {step}"
               + "".join(f"; {k} {then!r} -> {now!r}" for k, (then, now) in changed.items()))
    if master:
        os.makedirs(out_dir, exist_ok=True)
        run_log = RunLog(out_dir, step, settings, wandb_log, wandb_project, wandb_run_name)
        rollouts_file = open_training_log(out_dir, step, "rollouts.jsonl") if log_rollouts else None
    print0(f"grpo: {task} prompts, {prompts_per_step} x {group_size} rollouts per step on {world} rank(s), "
           f"{prompts_per_step // mini_batch} update(s) per step, beta {beta}, rewards {report_reward} / "
           f"{grounding_reward}, thinking {thinking}")

    def held_out():  # the greedy rewards on the held-out prompts, averaged over the ranks
        return held_out_rewards(policy, processor, eval_sets, device, thinking, max_new_tokens, report_reward,
                                metric_weights)
    if eval_sets and step == 0:
        before = held_out()
        if master:
            run_log.write({"step": 0, **before})
    bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True)
    while step < max_steps:
        times, step_start = {}, time.time()
        # prompts: rank r takes prompts r, r + world, ...: mini-batch u of every rank then holds the same prompts
        # as mini-batch u of a single process, so sharding does not change the updates (filter_groups draws more)
        step_task = step_tasks[step % len(step_tasks)]
        n_draw = prompts_per_step * max(1, filter_groups)
        records = step_prompts(pools[step_task], step, len(step_tasks), n_draw, seed)[rank::world]

        t0 = time.time()  # G answers per prompt from the current policy
        policy.eval()
        rollouts, completions = sample_rollouts(policy, processor, records, group_size, thinking, device, temperature,
                                                top_p, max_new_tokens, generate_batch)
        times["generate"] = time.time() - t0

        t0 = time.time()  # rewards, and each answer's advantage over its own group
        gold_answers = [reference_answer(r) for r in records for _ in range(group_size)]
        reward_list, components = rewards.score(step_task, completions, gold_answers, reward=report_reward,
                                                thinking=thinking, metric_weights=metric_weights,
                                                grounding=grounding_reward)
        drawn = len(records)
        if filter_groups:  # this rank's share of the groups whose rewards spread: the others teach nothing
            rows, drawn = groups_with_spread(reward_list, rollouts.group_ids.tolist(), prompts_per_step // world)
            rollouts = rollouts.rows(torch.tensor(rows, device=device))
            reward_list, completions = [reward_list[j] for j in rows], [completions[j] for j in rows]
            components = {k: [v[j] for j in rows] for k, v in components.items()}
        advantages = group_advantages(reward_list, rollouts.group_ids.cpu(), scale_std=scale_std).to(device)
        times["reward"] = time.time() - t0

        t0 = time.time()  # pi_old and pi_ref of every sampled token, once for all the updates of this step
        n_updates = prompts_per_step // mini_batch
        pi_old = logprobs_before_update(policy, rollouts, n_updates, micro_batch, temperature)
        pi_ref = answer_logprobs(reference, rollouts, micro_batch, temperature) if reference is not None else None
        times["reference"] = time.time() - t0

        t0 = time.time()  # P / mini_batch optimizer updates over the rollouts
        stats = policy_update(policy, optimizer, rollouts, pi_old, pi_ref, advantages, world=world,
                              n_updates=n_updates, micro_batch=micro_batch,
                              grad_clip=grad_clip or float("inf"), loss_settings=loss_settings,
                              mask_overlong=overlong == "mask", tis_cap=tis_cap, temperature=temperature)
        times["train"] = time.time() - t0
        step += 1

        times["step"] = time.time() - step_start
        stats.update(health(rollouts, pi_old, drawn * world))
        log = step_log(step_task, records, reward_list, components, rollouts, stats, times, list(pools[step_task]),
                       world)
        if eval_sets and (step % eval_every == 0 or step == max_steps):
            log.update(held_out())
        if master:
            n_lines = max(log_rollouts, WANDB_GROUPS if wandb_log else 0)
            lines = rollout_lines(step, records, completions, reward_list, components, advantages, rollouts, n_lines,
                                  image_size) if n_lines else []
            run_log.write({"step": step, "task": step_task, **log}, groups=lines[:WANDB_GROUPS])
            if rollouts_file:
                rollouts_file.write("".join(json.dumps(line) + "\n" for line in lines[:log_rollouts]))
                rollouts_file.flush()
            bar.set_postfix(reward=f"{log['reward_mean']:.3f}", kl=f"{log['kl']:.4f}",
                            len=f"{log['response_length']:.0f}")
            bar.update(1)
        if save_every and (step % save_every == 0 or step == max_steps):
            save_training_checkpoint(out_dir, step, policy, optimizer, processor, keep_last=keep_last,
                                     train_state={"step": step, "settings": settings}, dtype=compute_dtype(device))
    bar.close()
    if master:
        run_log.close()
    print0(f"done: {step} steps" + (f"; policy in {latest_checkpoint(out_dir)}" if save_every else ""))


if __name__ == "__main__":
    main()
    end_distributed()
