"""The 2025 objective menu (docs/objectives.md) against hand-worked examples: Dr. GRPO's, RLOO's and REINFORCE++'s
advantages, Dr. GRPO's loss normalisation, clip-higher at both edges, dynamic sampling, the overlong filter and
penalty, truncated importance sampling; and the defaults' update bit-identical to the recipe's (frozen below)."""
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

TINY = str(ROOT / "data" / "tiny")


def ragged_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


# ---- advantages ----
def test_drgrpo_advantage_is_the_score_minus_the_group_mean_without_std():
    # group 1: 1, -0.5, -0.5, -1: mean -0.25, A = 1.25, -0.25, -0.25, -0.75; group 2 scored alike: 0
    scores = torch.tensor([1.0, -0.5, -0.5, -1.0, 0.5, 0.5, 0.5, 0.5])
    got = ppo.group_advantages(scores, 4, std=False)
    assert torch.equal(got, torch.tensor([1.25, -0.25, -0.25, -0.75, 0, 0, 0, 0]))


def test_rloo_advantage_leaves_each_response_out_of_its_own_baseline():
    # group 1 sums to -1; r_0 = 1: the others' mean (-1 - 1) / 3 = -2/3, A = 5/3; r_1 = r_2 = -0.5: (-0.5) / 3,
    # A = -1/3; r_3 = -1: 0 / 3, A = -1. (= 4/3 x the Dr. GRPO advantage.) Group 2 scored alike: 0.
    scores = torch.tensor([1.0, -0.5, -0.5, -1.0, -1.0, -1.0, -1.0, -1.0])
    got = ppo.rloo_advantages(scores, 4)
    torch.testing.assert_close(got, torch.tensor([5 / 3, -1 / 3, -1 / 3, -1.0, 0, 0, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(got, 4 / 3 * ppo.group_advantages(scores, 4, std=False))
    with pytest.raises(ValueError):
        ppo.rloo_advantages(scores, 3)  # 8 scores are not groups of 3


def test_zero_variance_groups():
    scores = torch.tensor([1.0, 1.0, 1.0, -0.5, -1.0, -1.0, 0.5, 0.5, 0.5])
    assert ppo.zero_variance_groups(scores, 3).tolist() == [True, False, True]


def batch_of(mask, old, ref):
    return {"response_mask": mask, "loss_mask": mask.clone(), "old_logp": old * mask, "ref_logp": ref * mask,
            "values": torch.zeros_like(mask)}


def test_reinforce_pp_is_the_reward_to_go_whitened_over_the_batch():
    runtime.init_distributed()
    # rows of length 2 and 1, scores 1 and -1, kl_coef 0.5 with k1 = old - ref = 0.2, 0.4 on row 0:
    # rewards row 0: -0.1, -0.2 + 1 = 0.8; row 1: -1. Reward-to-go (V = 0, lam = 1): 0.7, 0.8 | -1.
    mask = ragged_mask([2, 1], 2)
    batch = batch_of(mask, torch.tensor([[-1.0, -1.0], [-2.0, 0]]), torch.tensor([[-1.2, -1.4], [-2.0, 0]]))
    ppo.advantages_and_returns(batch, [1.0, -1.0], ppo.Config(advantage="reinforce++", kl_coef=0.5))
    torch.testing.assert_close(batch["returns"], torch.tensor([[0.7, 0.8], [-1.0, 0]]), atol=1e-6, rtol=0)
    # whitened over the 3 valid tokens: mean 1/6, E[x^2] = (0.49 + 0.64 + 1) / 3 = 0.71, var = 0.71 - 1/36
    mean, std = 0.5 / 3, math.sqrt(0.71 - 1 / 36)
    want = torch.tensor([[(0.7 - mean) / std, (0.8 - mean) / std], [(-1 - mean) / std, 0]])
    torch.testing.assert_close(batch["advantages"], want, atol=1e-5, rtol=0)
    # the whitening is the batch's, even with --no-whiten-advantages (that flag is gae's)
    batch2 = batch_of(mask, batch["old_logp"], batch["ref_logp"])
    ppo.advantages_and_returns(batch2, [1.0, -1.0], ppo.Config(advantage="reinforce++", kl_coef=0.5,
                                                                whiten_advantages=False))
    torch.testing.assert_close(batch2["advantages"], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("advantage,outcome", [("drgrpo", [1.0, -1.0, 0.0, 0.0]),
                                               ("rloo", [2.0, -2.0, 0.0, 0.0])])
def test_group_baselines_put_the_outcome_on_every_token(advantage, outcome):
    # two groups of 2: (1, -1) and (-0.5, -0.5): Dr. GRPO +-1, RLOO +-2, the alike group 0; kl_coef 0
    mask = ragged_mask([3, 1, 2, 3], 3)
    batch = batch_of(mask, torch.zeros(4, 3), torch.zeros(4, 3))
    ppo.advantages_and_returns(batch, [1.0, -1.0, -0.5, -0.5],
                               ppo.Config(advantage=advantage, n_samples_per_prompt=2, kl_coef=0.0))
    torch.testing.assert_close(batch["advantages"], torch.tensor(outcome)[:, None] * mask)
    assert ppo.load_models.__doc__  # no critic for these: see test_ppo.test_grpo_needs_groups_and_plans_no_critic


# ---- losses ----
def test_seq_mean_token_sum_norm_divides_by_a_constant_not_the_length():
    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = ragged_mask([2, 1], 3)
    # token sums 3 and 3; L = the width 3 here: (3 + 3) / (2 x 3) = 1 (seq-mean-token-mean would give 3: 1.5 and 3)
    assert ppo.aggregate(per_token, mask, "seq-mean-token-sum-norm").item() == 1.0
    assert ppo.aggregate(per_token, mask, "seq-mean-token-mean").item() == 2.25
    # ppo_update's denominator: sequences x --generate-max-len (20): 6 / 40
    cfg = ppo.Config(loss_agg="seq-mean-token-sum-norm", generate_max_len=20)
    runtime.init_distributed()
    count = ppo.minibatch_count({"loss_mask": mask}, [0, 1], cfg, torch.device("cpu"))
    assert count.item() == 40.0
    assert ppo.aggregate(per_token, mask, "seq-mean-token-sum-norm", count).item() == pytest.approx(0.15)


def clipped(ratio: float, adv: float, eps_high=None):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss = ppo.policy_loss(logp, torch.zeros(1, 1), torch.tensor([[adv]]), torch.ones(1, 1), 0.2,
                           clip_eps_high=eps_high)
    loss.backward()
    return loss.item(), logp.grad.item()


def test_clip_higher_at_both_edges():
    # upper edge, A = +1: ratio 1.25 is clipped at 1.2 by the symmetric clip (no gradient) but inside 1.28
    loss, grad = clipped(1.25, 1.0)
    assert loss == pytest.approx(-1.2) and grad == 0.0
    loss, grad = clipped(1.25, 1.0, eps_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)  # d(-ratio)/d(log ratio) = -ratio
    loss, grad = clipped(1.3, 1.0, eps_high=0.28)
    assert loss == pytest.approx(-1.28) and grad == 0.0
    # lower edge, A = -1: eps_high does not move it; ratio 0.75 stays clipped at 0.8, 0.85 is inside
    for high in (None, 0.28):
        loss, grad = clipped(0.75, -1.0, high)
        assert loss == pytest.approx(0.8) and grad == 0.0
        loss, grad = clipped(0.85, -1.0, high)
        assert loss == pytest.approx(0.85) and grad == pytest.approx(0.85)
    # A < 0 above the upper edge and A > 0 below the lower edge are never clipped (the pessimistic bound)
    assert clipped(1.5, -1.0, 0.28) == (pytest.approx(1.5), pytest.approx(1.5))
    assert clipped(0.5, 1.0, 0.28) == (pytest.approx(-0.5), pytest.approx(-0.5))


# ---- dynamic sampling ----
def drawer(batches):
    calls = []

    def draw(k):
        calls.append(k)
        return [(None, "", "g", s) for s in batches[k]]
    return draw, calls


def test_dynamic_sampling_refills_to_the_batch_size():
    # groups of 2, 3 needed. Draw 0: (1, 1) (1, -1) (-1, -1): one kept. Draw 1: (1, -0.5) (0, 0) (1, -1): two more.
    draw, calls = drawer([[1, 1, 1, -1, -1, -1], [1, -0.5, 0, 0, 1, -1], [0.5, -1] * 3])
    rows, counts = ppo.fill_groups(draw, 3, 2, dynamic=True, max_draws=10)
    assert calls == [0, 1]
    assert [r[3] for r in rows] == [1, -1, 1, -0.5, 1, -1]
    assert counts == {"draws": 2, "groups": 6, "zero_variance": 3}
    # more than needed: the first 3 kept groups
    draw, _ = drawer([[1, -1] * 5])
    rows, counts = ppo.fill_groups(draw, 3, 2, dynamic=True, max_draws=10)
    assert len(rows) == 6 and counts["draws"] == 1
    # off: one draw, every group kept, the zero-variance ones counted
    draw, calls = drawer([[1, 1, 1, -1, -1, -1]])
    rows, counts = ppo.fill_groups(draw, 3, 2, dynamic=False, max_draws=10)
    assert calls == [0] and len(rows) == 6 and counts == {"draws": 1, "groups": 3, "zero_variance": 2}


def test_dynamic_sampling_stops_clearly_when_the_data_runs_out():
    draw, calls = drawer([[1, 1, -1, -1]] * 5)  # every group scores alike
    with pytest.raises(SystemExit, match=r"--dynamic-sampling: 0 of 2 groups .* after 3 batches"):
        ppo.fill_groups(draw, 2, 2, dynamic=True, max_draws=3)
    assert calls == [0, 1, 2]


def test_dynamic_sampling_draws_until_every_rank_has_enough():
    # this rank is full after one draw, another rank is not (all_ranks says False once): it draws again
    answers = iter([False, True])
    draw, calls = drawer([[1, -1] * 2, [1, -1] * 2])
    rows, counts = ppo.fill_groups(draw, 2, 2, dynamic=True, max_draws=5, all_ranks=lambda ok: next(answers))
    assert calls == [0, 1] and len(rows) == 4 and counts["draws"] == 2


# ---- overlong ----
def test_overlong_penalty_hand_worked():
    # budget 20, buffer 4: no penalty up to 16 tokens, then -1/4 per token down to -1 at 20
    got = ppo.overlong_penalty(torch.tensor([10, 16, 17, 18, 20]), 20, 4)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    torch.testing.assert_close(ppo.overlong_penalty(torch.tensor([18]), 20, 4, factor=2.0), torch.tensor([-1.0]))


def test_overlong_filter_masks_truncated_rows():
    mask = ragged_mask([2, 3, 1], 3)
    got = ppo.overlong_filter(mask, torch.tensor([False, True, False]))
    assert torch.equal(got, torch.tensor([[1.0, 1, 0], [0, 0, 0], [1, 0, 0]]))


def test_overlong_in_advantages_and_returns():
    runtime.init_distributed()
    mask = ragged_mask([4, 2], 4)  # row 0 used the whole budget of 4 (truncated), row 1 stopped at 2
    shape = ppo.Config(advantage="reinforce++", kl_coef=0.0, overlong="shape", overlong_buffer=2, generate_max_len=4)
    batch = batch_of(mask, torch.zeros(2, 4), torch.zeros(2, 4))
    ppo.advantages_and_returns(batch, [1.0, 1.0], shape, [True, False])
    torch.testing.assert_close(batch["returns"], torch.tensor([[0.0] * 4, [1.0, 1.0, 0, 0]]))  # 1 - 1 | 1 - 0
    filt = ppo.Config(advantage="grpo", n_samples_per_prompt=2, kl_coef=0.0, overlong="filter")
    batch = batch_of(mask, torch.zeros(2, 4), torch.zeros(2, 4))
    ppo.advantages_and_returns(batch, [1.0, -1.0], filt, [True, False])
    assert torch.equal(batch["loss_mask"], torch.tensor([[0.0] * 4, [1.0, 1, 0, 0]]))
    assert torch.equal(batch["response_mask"], mask)  # lengths and statistics still see every token


# ---- truncated importance sampling ----
def test_tis_weights_are_the_capped_ratio_and_1_when_sampler_and_trainer_agree():
    old = torch.tensor([[-1.0, -0.5, -2.0]])
    sampler = torch.tensor([[-1.0, -1.0, -0.1]])
    got = ppo.tis_weights(old, sampler, 1.5)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.5, math.exp(-1.9)]]))
    torch.testing.assert_close(ppo.tis_weights(old, sampler, 100.0), torch.exp(old - sampler))
    same = torch.randn(4, 7)
    assert torch.equal(ppo.tis_weights(same, same.clone(), 2.0), torch.ones(4, 7))
    # in the loss: each token's term times its weight
    logp, adv, mask = torch.randn(1, 3) * 0.1 - 1, torch.tensor([[1.0, -1.0, 0.5]]), torch.ones(1, 3)
    w = ppo.tis_weights(old, sampler, 1.5)
    ratio = torch.exp(logp - old)
    per_token = torch.max(-ratio * adv, -ratio.clamp(0.8, 1.2) * adv)
    got = ppo.policy_loss(logp, old, adv, mask, 0.2, "token-mean", weights=w)
    torch.testing.assert_close(got, (per_token * w).sum() / 3)


def test_tis_needs_the_samplers_logprobs():
    samples = [runtime.Sample([1], [2, 3], False, None)]
    with pytest.raises(SystemExit, match="--tis-cap"):
        runtime.sampler_logprobs(samples, 2, "tis-cap")


def test_menu_flags_are_validated():
    bad = [(["--advantage", "rloo", "--n-samples-per-prompt", "1"], "n-samples-per-prompt"),
           (["--dynamic-sampling", "--n-samples-per-prompt", "1"], "n-samples-per-prompt"),
           (["--overlong", "shape"], "overlong-buffer"), (["--overlong", "cut"], "overlong"),
           (["--tis-cap", "-1"], "tis-cap"), (["--loss-agg", "seq-sum"], "loss-agg")]
    for flags, name in bad:
        with pytest.raises(SystemExit, match=name):
            ppo.validate(ppo.parse_args(["--preset", "tiny"] + flags))
    ppo.validate(ppo.parse_args(["--preset", "tiny", "--advantage", "reinforce++", "--n-samples-per-prompt", "1"]))


# ---- the defaults: bit-identical to the recipe's update ----
# Frozen copies of ppo.py's math before the menu (commit 8ebb21e): the default flags must give exactly these.
def frozen_aggregate(per_token, mask, loss_agg="seq-mean-token-mean", denom=None):
    if loss_agg == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / (per_seq.numel() if denom is None else denom)
    return (per_token * mask).sum() / (mask.sum().clamp(min=1) if denom is None else denom)


def frozen_policy_loss(logp, old_logp, advantages, mask, clip_eps, loss_agg="seq-mean-token-mean", denom=None,
                       clip_eps_high=None, weights=None):
    assert clip_eps_high is None and weights is None  # what the defaults pass
    ratio = torch.exp(logp - old_logp)
    per_token = torch.max(-ratio * advantages, -ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    return frozen_aggregate(per_token, mask, loss_agg, denom)


def frozen_minibatch_count(batch, idx, cfg, device):
    rows = batch["response_mask"][idx]
    count = rows.sum() if cfg.loss_agg == "token-mean" else torch.tensor(float(len(idx)))
    count = count.to(device, torch.float32)
    torch.distributed.all_reduce(count)
    return count


def frozen_advantages_and_returns(batch, scores, cfg):
    m = batch["response_mask"]
    kl = ppo.kl_penalty(batch["old_logp"], batch["ref_logp"], cfg.kl_estimator) * m
    outcome = torch.tensor(scores)
    if cfg.advantage == "grpo":
        groups = outcome.reshape(-1, cfg.n_samples_per_prompt)
        centred = groups - groups.mean(dim=1, keepdim=True)
        outcome = (centred / (groups.std(dim=1, keepdim=True) + 1e-6)).reshape(outcome.shape)
    batch["rewards"] = ppo.shape_rewards(outcome, kl, m, cfg.kl_coef)
    lam = 1.0 if cfg.advantage == "grpo" else cfg.lam
    adv, batch["returns"] = ppo.compute_gae(batch["rewards"], batch["values"], m, cfg.gamma, lam)
    whiten = cfg.whiten_advantages and cfg.advantage == "gae"
    batch["advantages"] = ppo.masked_whiten(adv, m, distributed=True) if whiten else adv


@pytest.mark.parametrize("preset,advantage", [("v0", "gae"), ("tiny", "grpo")])  # each loss_agg, each path
def test_default_flags_give_the_recipes_update_bit_for_bit(preset, advantage, monkeypatch):
    """One RL step's experience and update (2 mini-batches, micro-batches of 3) with every new flag at its
    default, against the same step through the frozen functions: advantages, returns, every trained weight
    and every logged statistic equal bit for bit."""
    rank, world, device = runtime.init_distributed()
    g = torch.Generator().manual_seed(3)
    samples = []
    for _ in range(8):
        p = torch.randint(0, 256, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(0, 256, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        samples.append(runtime.Sample(p, r, False, None))
    scores = [1.0, -0.5, -1.0, 1.0, -0.5, -0.5, -1.0, 1.0]
    noise = 0.1 * torch.randn(8, 8, generator=g)
    base = ppo.Config() if preset == "v0" else ppo.Config(**ppo.PRESETS["tiny"])
    cfg = ppo.Config(**{**vars(base), "advantage": advantage, "train_batch_size": 4, "micro_train_batch_size": 3,
                        "n_samples_per_prompt": 2, "actor_lr": 1e-3, "critic_lr": 1e-3, "warmup_ratio": 0.0})

    def one_step(frozen: bool):
        if frozen:
            monkeypatch.setattr(ppo, "policy_loss", frozen_policy_loss)
            monkeypatch.setattr(ppo, "aggregate", frozen_aggregate)
            monkeypatch.setattr(ppo, "minibatch_count", frozen_minibatch_count)
        torch.manual_seed(0)
        actor = runtime.shard_model(runtime.load_model(TINY, seed=0), device)
        ref = runtime.shard_model(runtime.load_model(TINY, seed=0), device)
        critic = None
        if advantage == "gae":
            critic = runtime.shard_model(ppo.Critic(runtime.load_model(TINY, seed=1), "normal", seed=2), device)
        batch = ppo.pad_samples(samples, 256)
        ppo.experience_forward(actor, ref, critic, batch, cfg, device, samples)
        m = batch["response_mask"]
        batch["old_logp"] = (batch["old_logp"] + noise[:, : m.size(1)]) * m  # ratios off 1, some clipped
        if frozen:
            frozen_advantages_and_returns(batch, scores, cfg)
        else:
            ppo.advantages_and_returns(batch, scores, cfg, [s.truncated for s in samples])
        learners = [ppo.make_learner(n, x, lr, cfg, 2) if x is not None else None
                    for n, x, lr in (("actor", actor, cfg.actor_lr), ("critic", critic, cfg.critic_lr))]
        stats = ppo.ppo_update(*learners, batch, cfg, world, device, train_actor=True,
                               generator=torch.Generator().manual_seed(0))
        monkeypatch.undo()
        weights = {n: t.clone() for x in (actor, critic) if x is not None for n, t in ppo.stream_weights(x)}
        return batch, weights, stats

    new_batch, new_w, new_stats = one_step(frozen=False)
    old_batch, old_w, old_stats = one_step(frozen=True)
    for key in ("rewards", "returns", "advantages"):
        assert torch.equal(new_batch[key], old_batch[key]), key
    assert new_w.keys() == old_w.keys()
    start = dict(runtime.load_model(TINY, seed=0).named_parameters())
    assert any(not torch.equal(new_w[k], start[k]) for k in start)  # the step moved the weights
    for k in new_w:
        assert torch.equal(new_w[k], old_w[k]), k
    for k in old_stats:
        assert new_stats[k] == old_stats[k], k
    assert {"clipfrac_low", "clipfrac_high"} <= new_stats.keys()
