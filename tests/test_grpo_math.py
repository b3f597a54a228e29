import math

import pytest
import torch

from grpo import group_advantages, groups_with_spread, grpo_loss, kl_k3


def test_group_advantages_by_hand():
    rewards = [1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.8]
    groups = [7, 7, 7, 7, 3, 3, 3, 3]  # group ids need not be 0..n-1 or sorted
    adv = group_advantages(rewards, groups)
    std_a = math.sqrt(((0.5) ** 2 + 0.5 ** 2 + 0 + 0) / 3)  # unbiased std of [1, 0, .5, .5]
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, 0.0, 0.0]) / (std_a + 1e-6), atol=1e-6)
    mean_b = 0.35
    std_b = math.sqrt((3 * 0.15 ** 2 + 0.45 ** 2) / 3)
    assert torch.allclose(adv[4:], (torch.tensor([0.2, 0.2, 0.2, 0.8]) - mean_b) / (std_b + 1e-6), atol=1e-5)
    drgrpo = group_advantages(rewards, groups, scale_std=False)
    assert torch.allclose(drgrpo[:4], torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_zero_variance_groups_get_zero_advantage():
    adv = group_advantages([0.3, 0.3, 0.3, 1.0, 0.0], [0, 0, 0, 1, 1])
    assert torch.equal(adv[:3], torch.zeros(3))
    assert adv[3] > 0 > adv[4]


def test_k3_is_nonnegative_zero_at_equality_and_finite_for_extremes():
    logp = torch.randn(1000) * 3
    ref = torch.randn(1000) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert torch.equal(kl_k3(logp, logp), torch.zeros(1000))
    extreme = kl_k3(torch.tensor([0.0, -1e4, 0.0]), torch.tensor([-1e4, 0.0, float("-inf")]))
    assert torch.isfinite(extreme).all()


def _reference_loss(logp, old, ref, adv, mask, beta, eps_low, eps_high, dual_clip):
    """The objective written out token by token, with Python floats."""
    total, count = 0.0, 0
    for i in range(len(logp)):
        for t in range(len(logp[0])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            a = adv[i]
            objective = min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
            loss = -objective
            if a < 0:
                loss = min(loss, -a * dual_clip)
            d = ref[i][t] - logp[i][t]
            loss += beta * (math.exp(d) - d - 1)
            total += loss
            count += 1
    return total / count


def test_loss_equals_per_token_reference():
    torch.manual_seed(0)
    B, T = 6, 9
    old = -torch.rand(B, T) * 3
    logp = old + torch.randn(B, T) * 0.6  # ratios well outside [0.8, 1.28], and a few huge ones
    logp[0, 0] = old[0, 0] + 3.0
    ref = old + torch.randn(B, T) * 0.3
    adv = torch.tensor([1.5, -1.0, 0.0, -2.0, 0.7, -0.3])
    mask = torch.rand(B, T) > 0.3
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    expected = _reference_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.04, 0.2,
                               0.28, 3.0)
    assert abs(loss.item() - expected) < 1e-5
    assert 0 < stats["clip_frac"] < 1


def test_loss_aggregations():
    torch.manual_seed(1)
    logp = -torch.rand(2, 4)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    # on-policy (ratio 1), no KL: per-token loss is -A
    token_mean, _ = grpo_loss(logp, logp, None, adv, mask, beta=0.0)
    assert abs(token_mean.item() - (-4 + 1) / 5) < 1e-6
    seq_mean, _ = grpo_loss(logp, logp, None, adv, mask, beta=0.0, loss_agg="seq-mean")
    assert abs(seq_mean.item() - 0.0) < 1e-6
    constant, _ = grpo_loss(logp, logp, None, adv, mask, beta=0.0, loss_agg="constant", max_new_tokens=8)
    assert abs(constant.item() - (-3) / (2 * 8)) < 1e-6


def test_gradient_pushes_up_positive_advantage_tokens():
    logits = torch.zeros(2, 3, 5, requires_grad=True)
    tokens = torch.tensor([[1, 2, 3], [1, 2, 3]])
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    loss, _ = grpo_loss(logp, logp.detach(), None, torch.tensor([1.0, -1.0]), torch.ones(2, 3).bool(), beta=0.0)
    loss.backward()
    chosen_grad = logits.grad.gather(-1, tokens[..., None]).squeeze(-1)
    assert (chosen_grad[0] < 0).all() and (chosen_grad[1] > 0).all()  # descent raises row 0, lowers row 1


# ---------------------------------------------------------------------------------------------------
# the variants: GSPO's sequence ratio, truncated importance sampling, which side clipped, dynamic sampling

def _reference_variant_loss(logp, old, rollout, adv, mask, eps_low, eps_high, sequence, tis_cap):
    """GSPO's sequence-level ratio and/or TIS weights, token-mean, no KL and no dual clip, in Python floats."""
    total, count = 0.0, 0
    for i in range(len(logp)):
        kept = [t for t in range(len(logp[0])) if mask[i][t]]
        seq_log_ratio = sum(logp[i][t] - old[i][t] for t in kept) / max(1, len(kept))
        for t in kept:
            ratio = math.exp(seq_log_ratio if sequence else logp[i][t] - old[i][t])
            objective = min(ratio * adv[i], min(max(ratio, 1 - eps_low), 1 + eps_high) * adv[i])
            weight = min(math.exp(old[i][t] - rollout[i][t]), tis_cap) if tis_cap else 1.0
            total += -objective * weight
            count += 1
    return total / count


def test_gspo_and_tis_equal_their_references():
    torch.manual_seed(2)
    B, T = 5, 7
    old = -torch.rand(B, T) * 3
    logp = old + torch.randn(B, T) * 0.4
    rollout = old + torch.randn(B, T) * 0.3  # what generate sampled with differs a little from pi_old
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.0])
    mask = torch.rand(B, T) > 0.25
    for sequence, tis_cap in ((True, 0.0), (False, 2.0), (True, 1.5)):
        tis = (old - rollout).exp().clamp(max=tis_cap) if tis_cap else None
        loss, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, dual_clip=0.0,
                            ratio_level="sequence" if sequence else "token", tis_weights=tis)
        expected = _reference_variant_loss(logp.tolist(), old.tolist(), rollout.tolist(), adv.tolist(), mask.tolist(),
                                           0.2, 0.28, sequence, tis_cap)
        assert abs(loss.item() - expected) < 1e-5, (sequence, tis_cap)


def test_clip_fractions_say_which_side_clipped():
    # row 0 (A > 0): ratios 1.5 (clipped high), 1.1 (inside), 0.5 (A > 0 is not clipped below);
    # row 1 (A < 0): 0.5 (clipped low), 0.9 (inside), 1.5 (A < 0 is not clipped above)
    ratios = torch.tensor([[1.5, 1.1, 0.5], [0.5, 0.9, 1.5]])
    old = torch.zeros(2, 3)
    _, stats = grpo_loss(ratios.log(), old, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3).bool(), beta=0.0)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)


def test_dynamic_sampling_keeps_the_first_groups_whose_rewards_spread():
    rewards = [0.5, 0.5, 0.0, 1.0, 0.2, 0.2, -3.0, -2.0, 0.7, 0.9]  # groups of 2: flat, spread, flat, spread, spread
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    rows, drawn = groups_with_spread(rewards, groups, 2)
    assert rows == [2, 3, 6, 7] and drawn == 4  # the 2nd group with spread is the 4th drawn (negative rewards too)
    rows, drawn = groups_with_spread(rewards, groups, 4)  # only 3 spread: topped up with the first flat group
    assert rows == [0, 1, 2, 3, 6, 7, 8, 9] and drawn == 5


# ---------------------------------------------------------------------------------------------------
# each switch's formula and each health statistic of the step log, on values worked out by hand

def test_dual_clip_bounds_the_loss_of_negative_advantages_by_hand():
    # A = -1 at ratios 5 and 2: the pessimistic branch is -A * ratio = 5 and 2; the dual clip bounds it at -A * c = 3.
    # A = +1 at ratio 5: clipped above to -1.28; the dual clip leaves positive advantages alone.
    ratios = torch.tensor([[5.0, 2.0], [5.0, 1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([-1.0, 1.0])
    dual, _ = grpo_loss(ratios.log(), torch.zeros(2, 2), None, adv, mask, beta=0.0, dual_clip=3.0)
    assert dual.item() == pytest.approx((3.0 + 2.0 - 1.28) / 3)
    plain, _ = grpo_loss(ratios.log(), torch.zeros(2, 2), None, adv, mask, beta=0.0, dual_clip=0.0)
    assert plain.item() == pytest.approx((5.0 + 2.0 - 1.28) / 3)


def test_gspo_ratio_is_the_exponent_of_the_mean_log_ratio_over_answer_tokens():
    # row 0: log-ratios 0.2, -0.1 and a masked 5.0: exp(0.05) for both its tokens, the masked one ignored
    log_ratios = torch.tensor([[0.2, -0.1, 5.0]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = grpo_loss(log_ratios, torch.zeros(1, 3), None, torch.tensor([1.0]), mask, beta=0.0, dual_clip=0.0,
                            ratio_level="sequence")
    assert loss.item() == pytest.approx(-math.exp(0.05))
    assert stats["ratio_max"].item() == pytest.approx(math.exp(0.05))


def test_tis_weight_is_pi_old_over_pi_rollout_capped():
    from grpo import tis_weights
    old = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.9)]])
    sampled = torch.tensor([[math.log(0.25), math.log(0.4), math.log(0.1)]])
    assert tis_weights(old, sampled, cap=3.0).tolist()[0] == pytest.approx([2.0, 0.5, 3.0])  # 0.9 / 0.1 = 9, capped


def test_overlong_masking_drops_every_token_of_answers_cut_at_max_new_tokens():
    from grpo import loss_tokens
    answer_mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    truncated = torch.tensor([True, False, False])
    assert torch.equal(loss_tokens(answer_mask, truncated, mask_overlong=False), answer_mask)
    assert loss_tokens(answer_mask, truncated, mask_overlong=True).tolist() == [
        [False, False, False], [True, True, False], [True, True, True]]


def test_ratio_max_is_the_largest_ratio_of_an_answer_token():
    ratios = torch.tensor([[1.2, 9.0], [0.5, 1.1]])  # 9.0 sits on padding
    mask = torch.tensor([[True, False], [True, True]])
    _, stats = grpo_loss(ratios.log(), torch.zeros(2, 2), None, torch.tensor([1.0, -1.0]), mask, beta=0.0)
    assert stats["ratio_max"].item() == pytest.approx(1.2)


def test_kl_stat_is_the_k3_mean_over_answer_tokens():
    logp = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.25), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)], [0.0, 9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    _, stats = grpo_loss(logp, logp, ref, torch.tensor([1.0, 1.0]), mask, beta=0.1)
    k3 = lambda r: r - math.log(r) - 1  # noqa: E731  (r = pi_ref / pi; ratios 0.5, 1, 4: swapped they sum otherwise)
    assert stats["kl"].item() == pytest.approx((k3(0.5) + k3(1.0) + k3(4.0)) / 3)


def _rollouts(group_ids, answer_mask, truncated=None, sampled_logprobs=None):
    from engine import Rollouts
    return Rollouts(input_ids=None, attention_mask=None, mm_token_type_ids=None, image_grid_thw=None, pixel_chunks=[],
                    answer_mask=torch.tensor(answer_mask), group_ids=torch.tensor(group_ids),
                    sampled_logprobs=sampled_logprobs, truncated=torch.tensor(truncated or [False] * len(group_ids)),
                    prompt_len=0)


def test_step_log_spread_statistics_by_hand():
    from grpo import step_log
    rollouts = _rollouts([0, 0, 1, 1, 2, 2], [[True, True, False]] * 3 + [[True, False, False]] * 3)
    rewards = [0.5, 0.5, 0.0, 1.0, 0.2, 0.2]  # groups 0 and 2 tie, group 1 spreads
    log = step_log("report", [{"task": "report"}] * 3, rewards, {}, rollouts, {"kl": 0.0}, {"step": 1.0}, ["report"], 1)
    assert log["zero_var_frac"] == pytest.approx(2 / 3)
    assert log["reward_mean"] == pytest.approx(2.4 / 6)
    assert log["reward_std"] == pytest.approx(torch.tensor(rewards).std().item())  # unbiased, over all answers
    assert log["response_length"] == pytest.approx(1.5)


def test_mismatch_kl_and_truncated_share_by_hand():
    from grpo import health
    sampled = torch.tensor([[math.log(0.5), math.log(0.4)], [math.log(0.2), 0.0]])
    old = torch.tensor([[math.log(0.25), math.log(0.4)], [math.log(0.8), -7.0]])  # the last token is padding
    rollouts = _rollouts([0, 0], [[True, True], [True, False]], truncated=[True, False], sampled_logprobs=sampled)
    stats = health(rollouts, old, prompts_drawn=3)
    k3 = lambda r: r - math.log(r) - 1  # noqa: E731  (r = pi_old / pi_rollout: KL(pi_rollout || pi_old))
    assert stats["mismatch_kl"] == pytest.approx((k3(0.5) + k3(1.0) + k3(4.0)) / 3)  # 0.5, 1, 4: not symmetric
    assert stats["truncated_frac"] == 0.5 and stats["prompts_drawn"] == 3
