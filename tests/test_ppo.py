"""PPO's math on [batch, time] tensors, data loading, and importing without side effects."""
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402
import reward  # noqa: E402


def ragged_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


def gae_reference(rewards, values, lengths, gamma, lam):
    """The textbook loop, one sequence at a time, over its valid tokens only."""
    adv = torch.zeros_like(rewards)
    for i, L in enumerate(lengths):
        last = 0.0
        for t in reversed(range(L)):
            next_v = values[i, t + 1].item() if t + 1 < L else 0.0
            delta = rewards[i, t].item() + gamma * next_v - values[i, t].item()
            last = delta + gamma * lam * last
            adv[i, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_per_sequence_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths = [7, 1, 4, 10, 3, 9]
    T = 10
    mask = ragged_mask(lengths, T)
    rewards = torch.randn(len(lengths), T, generator=g)
    values = torch.randn(len(lengths), T, generator=g)
    garbage = 1e3 * torch.randn(len(lengths), T, generator=g)  # padding must not leak in
    adv, ret = ppo.compute_gae(torch.where(mask > 0, rewards, garbage), torch.where(mask > 0, values, garbage),
                               mask, gamma, lam)
    ref = gae_reference(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, (ref + values) * mask, atol=1e-5, rtol=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()
    if gamma == lam == 1.0:  # A_t = sum of rewards from t on - V_t (Monte-Carlo return minus baseline)
        mc = (rewards * mask).flip(1).cumsum(1).flip(1)
        torch.testing.assert_close(adv, (mc - values) * mask, atol=1e-4, rtol=1e-5)


def test_whitening_ignores_padding():
    g = torch.Generator().manual_seed(1)
    lengths = [5, 2, 8, 1]
    mask = ragged_mask(lengths, 8)
    x = torch.randn(4, 8, generator=g) * 3 + 2
    a = ppo.masked_whiten(x, mask)
    b = ppo.masked_whiten(torch.where(mask > 0, x, torch.full_like(x, 1e6)), mask)
    torch.testing.assert_close(a, b)
    valid = a[mask > 0]
    assert abs(valid.mean().item()) < 1e-5
    assert abs(valid.var(unbiased=False).item() - 1) < 1e-4
    assert (a[mask == 0] == 0).all()
    # the statistics are those of the valid entries alone
    xs = x[mask > 0]
    torch.testing.assert_close(valid, (xs - xs.mean()) / xs.std(unbiased=False), atol=1e-5, rtol=1e-5)


def test_policy_loss_hand_worked():
    eps = 0.2
    # (log ratio, advantage) -> per-token loss = max(-r A, -clip(r) A)
    cases = [
        (0.5, 1.0, -1.2),  # r = 1.6487 > 1.2, A > 0: clipped at 1.2 (no incentive to push further)
        (0.1, 1.0, -math.exp(0.1)),  # r = 1.1052 inside the band: unclipped
        (-0.5, -1.0, 0.8),  # r = 0.6065 < 0.8, A < 0: clipped at 0.8
        (0.5, -1.0, math.exp(0.5)),  # r = 1.6487, A < 0: unclipped, the pessimistic bound keeps the full penalty
        (math.log(0.5), 2.0, -1.0),  # r = 0.5, A > 0: unclipped (min picks r A = 1.0)
    ]
    logr = torch.tensor([[c[0] for c in cases] + [3.0]])  # the last token is padding
    adv = torch.tensor([[c[1] for c in cases] + [5.0]])
    mask = torch.tensor([[1.0] * len(cases) + [0.0]])
    old = torch.randn(1, len(cases) + 1)
    logp = (old + logr).requires_grad_(True)
    loss = ppo.policy_loss(logp, old, adv, mask, eps)
    expected = sum(c[2] for c in cases) / len(cases)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    grad = logp.grad[0]
    # clipped tokens carry no gradient; unclipped ones carry -r A / n; padding none
    n = len(cases)
    assert grad[0].item() == 0 and grad[2].item() == 0 and grad[5].item() == 0
    assert grad[1].item() == pytest.approx(-math.exp(0.1) / n, abs=1e-6)
    assert grad[3].item() == pytest.approx(math.exp(0.5) / n, abs=1e-6)
    assert grad[4].item() == pytest.approx(-1.0 / n, abs=1e-6)
    # denom: a sum over valid tokens divided by a given count (the global mini-batch's)
    assert ppo.policy_loss(logp, old, adv, mask, eps, "token-mean", denom=10.0).item() == pytest.approx(
        expected * n / 10, abs=1e-5)


def test_value_loss_hand_worked():
    eps = 0.2
    # (V, V_old, R) -> 0.5 * max((V - R)^2, (V_old + clip(V - V_old) - R)^2)
    cases = [
        (0.9, 0.5, 1.0, 0.5 * 0.09),  # moved 0.4 > 0.2 towards R: clipped value 0.7 is further, it counts
        (0.6, 0.5, 1.0, 0.5 * 0.16),  # moved 0.1: inside the band, both terms equal
        (0.2, 0.5, 0.0, 0.5 * 0.09),  # moved -0.3 towards R = 0: clipped 0.3 counts
        (1.5, 0.5, 1.0, 0.5 * 0.25),  # moved past R: unclipped error 0.5 > clipped 0.3
    ]
    v = torch.tensor([[c[0] for c in cases] + [7.0]], requires_grad=True)
    old = torch.tensor([[c[1] for c in cases] + [0.0]])
    ret = torch.tensor([[c[2] for c in cases] + [0.0]])
    mask = torch.tensor([[1.0] * len(cases) + [0.0]])
    loss = ppo.value_loss(v, old, ret, mask, eps)
    assert loss.item() == pytest.approx(sum(c[3] for c in cases) / len(cases), abs=1e-6)
    loss.backward()
    assert v.grad[0, 0].item() == 0 and v.grad[0, 2].item() == 0  # clipped: no gradient
    assert v.grad[0, 1].item() == pytest.approx((0.6 - 1.0) / 4, abs=1e-6)
    assert v.grad[0, 3].item() == pytest.approx((1.5 - 1.0) / 4, abs=1e-6)
    assert v.grad[0, 4].item() == 0


def test_rule_score_lands_on_last_valid_token():
    lengths = [3, 6, 1, 4]
    mask = ragged_mask(lengths, 6)
    kl = torch.rand(4, 6) * mask
    scores = torch.tensor([1.0, -0.5, -1.0, 1.0])
    r = ppo.shape_rewards(scores, kl, mask, kl_coef=0.1)
    for i, L in enumerate(lengths):
        expect = -0.1 * kl[i].clone()
        expect[L - 1] += scores[i]
        torch.testing.assert_close(r[i], expect)
    assert (r[mask == 0] == 0).all()  # nothing on padding
    torch.testing.assert_close(ppo.last_token_index(mask), torch.tensor([2, 5, 0, 3]))


def test_kl_estimators_match_formulas_and_estimate_kl():
    logp = torch.tensor([-1.0, -2.0, -0.1])
    ref = torch.tensor([-1.5, -1.0, -0.1])
    d = logp - ref
    torch.testing.assert_close(ppo.kl_penalty(logp, ref, "k1"), d)
    torch.testing.assert_close(ppo.kl_penalty(logp, ref, "k2"), 0.5 * d ** 2)
    torch.testing.assert_close(ppo.kl_penalty(logp, ref, "k3"), torch.exp(ref - logp) - 1 - (ref - logp))
    assert (ppo.kl_penalty(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError):
        ppo.kl_penalty(logp, ref, "k4")
    # as Monte-Carlo estimates from samples of pi, k1 and k3 are unbiased for KL(pi || pi_ref)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    exact = (p * (p / q).log()).sum().item()
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for kind in ("k1", "k3"):
        est = ppo.kl_penalty(p.log()[y], q.log()[y], kind).mean().item()
        assert est == pytest.approx(exact, rel=0.05), kind


def test_lr_schedule_warmup_cosine_floor():
    f = [runtime.lr_factor(s, 3, 100, 0.1) for s in range(101)]
    assert f[0] == pytest.approx(1 / 3) and f[2] == pytest.approx(1.0) and f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert f[100] == pytest.approx(0.1)


def test_pad_samples_positions_and_masks():
    samples = [runtime.Sample([5, 6, 7], [8, 9, 258], False, None), runtime.Sample([5], [8], True, None)]
    b = ppo.pad_samples(samples, pad_id=256)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 258], [256, 256, 5, 8, 256, 256]]
    assert b["position_ids"].tolist()[1][2:4] == [0, 1]  # left padding does not shift positions
    assert b["response_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_read_prompts_jsonl_json_and_errors(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"question": "1+2", "answer": "3", "level": 1}\n\n{"input": "Q: x\\nA:", "gt_answer": 4, "level": 2}\n')
    rows = ppo.read_prompts(str(jl), "tiny")
    assert rows == [{"prompt": "Q: 1+2\nA:", "gold": "3"}, {"prompt": "Q: x\nA:", "gold": "4"}]
    assert len(ppo.read_prompts(str(jl), "tiny", levels="2")) == 1
    js = tmp_path / "b.json"
    js.write_text(json.dumps([{"prompt": "p", "ground_truth_answer": "7"}]))
    assert ppo.read_prompts(str(js), "tiny") == [{"prompt": "p", "gold": "7"}]
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"question": "1+2", "answer": "3"}\n{"question": "2+2"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl line 2: none of the fields 'answer'"):
        ppo.read_prompts(str(bad), "tiny")
    bad.write_text('{"question": "1+2", "answer": "3"}\n{oops\n')
    with pytest.raises(ValueError, match=r"c\.jsonl line 2: invalid JSON"):
        ppo.read_prompts(str(bad), "tiny")
    js.write_text(json.dumps([{"prompt": "p", "answer": "1"}, {"answer": "2"}]))
    with pytest.raises(ValueError, match=r"b\.json index 1: none of the fields 'input', 'prompt', 'question', 'problem'"):
        ppo.read_prompts(str(js), "tiny")
    js.write_text(json.dumps([{"question": 5, "answer": "1"}]))
    with pytest.raises(ValueError, match=r"index 0: field 'question' must be a string"):
        ppo.read_prompts(str(js), "tiny")


def test_recipe_train_file_loads():
    path = SHARED / "train" / "simplerl_zero_v0" / "math_level3to5_data_processed_with_qwen_prompt.json"
    assert path.exists(), f"missing {path} (../shared/data beside the checkout)"
    rows = ppo.read_prompts(str(path), "simplerl")
    assert len(rows) == 8523
    assert rows[0]["prompt"].startswith("<|im_start|>system") and rows[0]["prompt"].endswith("<|im_start|>assistant")
    assert [i for i, r in enumerate(rows) if not r["gold"]] == [5054, 5158]  # two rows of v0's file have no answer


def test_prompt_stream_is_a_function_of_position():
    a = runtime.prompts_at(0, 25, 10, seed=3)
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))  # each pass is a permutation
    assert runtime.prompts_at(7, 9, 10, seed=3) == a[7:16]


def test_recipe_defaults():
    c = ppo.Config()
    assert (c.actor_lr, c.critic_lr, c.kl_coef, c.kl_estimator, c.gamma, c.lam) == (5e-7, 9e-6, 0.01, "k1", 1.0, 0.95)
    assert (c.clip_eps, c.value_clip, c.ppo_epochs, c.rollout_batch_size, c.n_samples_per_prompt) == (0.2, 0.2, 1, 1024, 8)
    assert (c.train_batch_size, c.prompt_max_len, c.generate_max_len, c.temperature) == (128, 1024, 3000, 0.6)
    assert (c.warmup_ratio, c.min_lr_ratio, c.max_grad_norm, c.adam_beta1, c.adam_beta2, c.seed) == (0.03, 0.1, 1.0, 0.9, 0.95, 42)
    tiny = ppo.parse_args(["--preset", "tiny", "--max-steps", "5"])
    assert tiny.max_steps == 5 and tiny.template == "tiny" and tiny.engine == "hf"


def test_v0_objective_defaults():
    """Each of v0's choices is the default (simpleRL-reason v0, OpenRLHF 0.5 under train/openrlhf)."""
    c = ppo.Config()
    assert c.logprob_temperature == 1.0  # models/actor.py: log_probs_from_logits(output["logits"]), no / T
    assert c.temperature == 0.6  # ... while sampling at 0.6
    assert c.loss_agg == "seq-mean-token-mean"  # models/loss.py: masked_mean(loss, mask, dim=-1).mean()
    assert c.grader == "v0"
    assert c.value_head_init == "normal"  # models/model.py: normal_(0, std=1 / (hidden_size + 1))
    assert c.keep_actor_weights is True and c.save_every == 4  # --save_steps 4 --max_ckpt_num 20000: all kept
    assert c.stop == "</s>" and c.min_new_tokens == 1  # experience_maker.py: stop=["</s>", ...], min_tokens=1
    assert c.long_prompts == "truncate"  # tokenize_fn(..., max_length=prompt_max_len, truncation=True)
    assert c.train_file == "data/train/math_level3to5.jsonl"  # what data/prepare_data.py writes
    import importlib.util
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "data" / "prepare_data.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    assert prep.TRAIN_OUT == "train/math_level3to5.jsonl"
    # the loss functions' own default is v0's aggregation too
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = -torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    z = torch.zeros(2, 3)
    assert ppo.policy_loss(z, z, adv, mask, 0.2).item() == pytest.approx(6.0)
    # the tiny preset keeps what its targets were measured with, and says so
    tiny = ppo.parse_args(["--preset", "tiny"])
    assert (tiny.loss_agg, tiny.value_head_init, tiny.grader, tiny.logprob_temperature, tiny.temperature) == \
        ("token-mean", "zeros", "simplerl", 1.0, 1.0)


def test_loss_aggregation_hand_worked():
    """Two sequences: per-token losses [1, 2, 3] and [10]. v0 (seq-mean-token-mean): (2 + 10) / 2 = 6;
    token-mean: 16 / 4 = 4. With ratio 1 the policy loss per token is -A; the value loss 0.5 (V - R)^2."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = -torch.tensor([[1.0, 2.0, 3.0], [10.0, 99.0, 99.0]])  # padding must not count
    logp = torch.zeros(2, 3, requires_grad=True)
    seq = ppo.policy_loss(logp, logp.detach(), adv, mask, 0.2, "seq-mean-token-mean")
    tok = ppo.policy_loss(logp, logp.detach(), adv, mask, 0.2, "token-mean")
    assert seq.item() == pytest.approx(6.0) and tok.item() == pytest.approx(4.0)
    seq.backward()  # d/dlogp of -ratio A / |s| / S: the short sequence's token weighs 3x more per token
    torch.testing.assert_close(logp.grad, torch.tensor([[1 / 6, 2 / 6, 3 / 6], [10 / 2, 0.0, 0.0]]))
    # value loss: V = 0, R = sqrt(2 l) so that 0.5 R^2 = l
    ret = torch.sqrt(2 * torch.tensor([[1.0, 2.0, 3.0], [10.0, 5.0, 5.0]]))
    v = torch.zeros(2, 3)
    assert ppo.value_loss(v, v, ret, mask, 100.0, "seq-mean-token-mean").item() == pytest.approx(6.0)
    assert ppo.value_loss(v, v, ret, mask, 100.0, "token-mean").item() == pytest.approx(4.0)
    # denom: the count of the whole mini-batch (here 4 sequences, this micro-batch holds 2)
    assert ppo.value_loss(v, v, ret, mask, 100.0, "seq-mean-token-mean", denom=4.0).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="loss-agg"):
        ppo.aggregate(v, mask, "sum")


def test_value_head_init_is_v0s_normal():
    """OpenRLHF 0.5 models/model.py: value_head.weight.data.normal_(mean=0.0, std=1 / (config.hidden_size + 1))."""
    lm = SimpleNamespace(config=SimpleNamespace(hidden_size=4095), model=torch.nn.Identity())
    w = ppo.Critic(lm, "normal", seed=3).value_head.weight.detach()
    assert w.shape == (1, 4095)
    std = 1 / 4096
    assert abs(w.mean().item()) < 4 * std / math.sqrt(4095)  # mean 0 within 4 standard errors
    assert w.std().item() == pytest.approx(std, rel=0.05)  # the std (not the variance) is 1 / (hidden + 1)
    torch.testing.assert_close(w, ppo.Critic(lm, "normal", seed=3).value_head.weight.detach())  # same on every rank
    assert (ppo.Critic(lm, "zeros").value_head.weight == 0).all()
    with pytest.raises(ValueError, match="value-head-init"):
        ppo.Critic(lm, "xavier")


def test_long_prompts_truncate_or_drop():
    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(range(len(t))) for t in texts]}
    rows = [{"prompt": "abc", "gold": "1"}, {"prompt": "abcdefg", "gold": "2"}]
    kept, n_long = runtime.tokenize_prompts(rows, Tok(), 4)  # v0: truncation=True keeps the first max_len tokens
    assert n_long == 1 and [r["ids"] for r in kept] == [[0, 1, 2], [0, 1, 2, 3]]
    kept, n_long = runtime.tokenize_prompts(rows, Tok(), 4, "drop")
    assert n_long == 1 and [r["gold"] for r in kept] == ["1"]


def test_math500_rows_with_problem_load():
    """The README's --test-file data/eval/math500/test.jsonl: rows have `problem` (and `answer`)."""
    path = SHARED / "eval" / "math500" / "test.jsonl"
    assert path.exists(), f"missing {path} (../shared/data beside the checkout)"
    rows = ppo.read_prompts(str(path), "simplerl")
    assert len(rows) == 500
    first = json.loads(path.read_text().splitlines()[0])
    assert rows[0]["prompt"] == reward.apply_template(first["problem"], "simplerl")
    assert rows[0]["gold"] == first["answer"]


def test_import_starts_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import ppo, torch.distributed as d; assert not d.is_initialized()"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""


# ---- GRPO: group-normalised outcome advantages (--advantage grpo) ----
def test_group_advantages_hand_worked():
    # group 1: scores 1, -0.5, -1, 1: mean 0.125; deviations 0.875, -0.625, -1.125, 0.875; squares sum to
    # 3.1875, / (4 - 1) = 1.0625, std = 1.0307764; A = deviation / std. Group 2 scored alike: A = 0.
    # Group 3 (size 4 as well): 1, 1, -1, -1: mean 0, std = sqrt(4 / 3) = 1.1547005; A = +-0.8660254.
    scores = torch.tensor([1.0, -0.5, -1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, -1.0, -1.0])
    got = ppo.group_advantages(scores, 4, eps=0.0 + 1e-12)
    want = torch.tensor([0.8488747, -0.6063391, -1.0914104, 0.8488747, 0, 0, 0, 0,
                         0.8660254, 0.8660254, -0.8660254, -0.8660254])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert ppo.group_advantages(scores, 4).shape == scores.shape
    with pytest.raises(ValueError):
        ppo.group_advantages(scores, 5)  # 12 scores are not groups of 5
    with pytest.raises(ValueError):
        ppo.group_advantages(scores, 1)  # a group of one has no spread


def test_grpo_advantage_is_the_normalised_score_on_every_token_plus_the_kl_to_come():
    # two prompts x 2 samples; lengths 3, 1, 2, 3 of T = 3
    mask = ragged_mask([3, 1, 2, 3], 3)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 0, 0], [-0.2, -0.3, 0], [-1.0, -1.0, -1.0]]) * mask
    ref = torch.tensor([[-1.5, -2.0, -0.25], [-0.5, 0, 0], [-0.2, -0.1, 0], [-1.0, -1.0, -1.0]]) * mask
    batch = {"response_mask": mask, "old_logp": old, "ref_logp": ref, "values": torch.zeros(4, 3)}
    cfg = ppo.Config(advantage="grpo", n_samples_per_prompt=2, kl_coef=0.0)
    ppo.advantages_and_returns(batch, [1.0, -1.0, -0.5, -0.5], cfg)
    # kl_coef 0: group 1 (1, -1): +-1/sqrt(2) on every valid token; group 2 scored alike: 0; pads 0
    a = 1 / math.sqrt(2)
    torch.testing.assert_close(batch["advantages"], torch.tensor([[a, a, a], [-a, 0, 0], [0, 0, 0], [0, 0, 0]]),
                               atol=1e-6, rtol=0)
    # kl_coef 0.1, k1 per token = old - ref: row 0 has 0.5, 0, -0.25, row 2 0, -0.2 (its group scored alike);
    # A_t = the normalised score - 0.1 * (the KL from t on)
    cfg = ppo.Config(advantage="grpo", n_samples_per_prompt=2, kl_coef=0.1)
    ppo.advantages_and_returns(batch, [1.0, -1.0, -0.5, -0.5], cfg)
    torch.testing.assert_close(batch["advantages"][0], torch.tensor([a - 0.025, a + 0.025, a + 0.025]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["advantages"][1], torch.tensor([-a + 0.05, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["advantages"][2], torch.tensor([0.02, 0.02, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["returns"], batch["advantages"])  # no critic: V = 0


def test_grpo_needs_groups_and_plans_no_critic():
    cfg = ppo.parse_args(["--preset", "tiny", "--advantage", "grpo", "--n-samples-per-prompt", "1"])
    with pytest.raises(SystemExit, match="n-samples-per-prompt"):
        ppo.validate(cfg)
    with pytest.raises(SystemExit, match="--advantage 'ppo'"):
        ppo.validate(ppo.parse_args(["--preset", "tiny", "--advantage", "ppo"]))
    config = transformers.AutoConfig.from_pretrained(ROOT / "data" / "tiny")
    gae = runtime.memory_plan(config, 1, ppo.parse_args(["--preset", "tiny"]), "cpu")
    grpo = runtime.memory_plan(config, 1, ppo.parse_args(["--preset", "tiny", "--advantage", "grpo"]), "cpu")
    for k in ("critic_weights", "critic_grads", "critic_adam"):
        assert gae[k] > 0 and grpo[k] == 0
    assert grpo["peak_training"] < gae["peak_training"]


def test_sampler_logprobs_fill_the_old_logprobs():
    samples = [runtime.Sample([1, 2], [3, 4, 5], False, [-0.1, -0.2, -0.3]), runtime.Sample([1], [6], False, [-0.5])]
    torch.testing.assert_close(runtime.sampler_logprobs(samples, 3), torch.tensor([[-0.1, -0.2, -0.3], [-0.5, 0, 0]]))
    with pytest.raises(SystemExit, match="old-logprobs"):
        runtime.sampler_logprobs([runtime.Sample([1], [6], False, None)], 1)
