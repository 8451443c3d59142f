"""SimpleRL-Zero: PPO from a base model on math, with a rule-based reward (no SFT, no reward model).

    torchrun --nproc_per_node=8 ppo.py --model Qwen/Qwen2.5-Math-7B --output-dir runs/ppo  # GPU: FSDP2, vLLM
    torchrun --nproc_per_node=2 ppo.py --preset tiny --model runs/demo/base/final  # CPU: gloo, HF generate
    python -c "import ppo"  # importing trains nothing

Reading order: Config (the recipe as defaults), the math (kl_penalty, shape_rewards, compute_gae,
masked_whiten, group_advantages, aggregate, policy_loss, value_loss), the 2025 menu, off by default
(rloo_advantages, zero_variance_groups, overlong_penalty, overlong_filter, tis_weights; docs/objectives.md),
the models (Critic: the value head; load_models), rollouts (the weight sync: stream_weights, sync_weights,
the engine's weights_version; fill_groups), the experience (experience_forward, advantages_and_returns), the
update (Learner.step, ppo_update), the held-out eval, `main`. Below the "bookkeeping below" marker: this
stage's data, step records, checks and CLI. The machinery shared with sft.py and evaluate.py (processes,
loading and FSDP2 sharding, checkpoints, the engines, metrics, the memory plan) is runtime.py; the reward is
reward.py.

One RL step, in the order the code runs it (`main`, same numbers):

  1. sync      the rollout engine gets the actor's current weights (sync_weights: a no-op when it holds them;
               every parameter streamed, all ranks in the same order, after an update or a sleep that
               discarded them). Every generate, rollout or eval, comes right after one.
  2. rollout   each rank takes its share of `rollout_batch_size` prompts and samples `n_samples_per_prompt`
               responses per prompt from the current policy (vLLM colocated on every rank, or HF generate).
  3. score     reward.batch_compute_scores: +1 boxed and right, -0.5 boxed and wrong, -1 no box.
  4. forward   no-grad passes over the samples: the actor's log-probs (log_softmax(logits / T_lp), T_lp =
               --logprob-temperature, 1 as in v0), the frozen reference's log-probs, the critic's values.
  5. shape     per-token reward  r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t))  + [t = last] * score
  6. GAE       delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  V_{T} = 0,
               returns R_t = A_t + V_t;  A whitened over every valid token of the rollout on all ranks.
               (--advantage grpo: no critic; the score in step 5 is first normalised within its prompt's
               group of samples, group_advantages, and A_t is the reward-to-go: GAE with V = 0, lam = 1;
               drgrpo, rloo and reinforce++ likewise with their own baselines: advantages_and_returns.)
  7. update    PPO epochs over mini-batches of `train_batch_size` sequences (gradient accumulation over
               micro-batches); clipped policy loss, clipped value loss; separate AdamW + cosine schedules.

Not textbook PPO, on purpose (each is v0's, as OpenRLHF 0.5 ran it; every deviation from v0 is a flag whose
default is v0's value, docs/fidelity.md):
  - the KL to the reference is a per-token penalty in the reward (k1, coefficient 0.01), not a loss term;
  - log-probs of the old, new and reference policies come from the T = 1 logits while sampling at T = 0.6
    (--logprob-temperature; v0 `models/actor.py`);
  - both losses are averaged over each sequence's tokens, then over sequences (--loss-agg; v0
    `models/loss.py`);
  - the critic is a second full network, the base model + Linear(hidden, 1) initialised
    normal(0, 1/(hidden+1)) (--value-head-init), and the score sits on the last token only;
  - 1,024 prompts x 8 samples per RL step, 128 responses per optimizer step: 64 optimizer steps, 1 epoch;
  - the reward is v0's rule (--grader v0); generation also stops at the string "</s>" (--stop) and emits at
    least one token (--min-new-tokens).
Left out: a reward model, adaptive KL control; an entropy bonus and critic-only warm-up
steps are flags, off as in v0. Not matched: v0 kept every optimizer state; here only the newest
--keep-checkpoints are resumable (actor weights are all kept).

Outputs in --output-dir: checkpoint-<step>/actor/ (HF folder, every checkpoint, as v0 kept them) and, for the
newest --keep-checkpoints, critic/ + optimizer/scheduler/RNG/data state (for --resume); final/actor (what
evaluate.py loads) and final/critic, metrics.jsonl, rollouts/step_<N>.jsonl, curves.png.
"""
import dataclasses
import math
import random
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from transformers import AutoModelForCausalLM

import reward
import runtime


# ---- Config: the recipe (SimpleRL-Zero v0) as defaults, one flag per field ----
@dataclass
class Config:
    # Defaults: SimpleRL-Zero v0 on Qwen2.5-Math-7B (OpenRLHF flags in brackets where they differ in name).
    model: str = "Qwen/Qwen2.5-Math-7B"  # actor and reference start here [--pretrain]
    critic_model: str = ""  # critic trunk (+ value head); empty: the same as --model [--critic_pretrain]
    train_file: str = "data/train/math_level3to5.jsonl"  # v0's 8,523 MATH level 3-5 problems
    test_file: str = ""  # held-out problems for greedy accuracy (optional; evaluate.py is the full benchmark)
    levels: str = ""  # keep only rows whose "level" is in this list, e.g. "3,4,5" (empty: all)
    template: str = "simplerl"  # for rows with a bare `question`; `input`/`prompt` rows are already formatted
    output_dir: str = "runs/ppo"  # metrics.jsonl, config.json, checkpoint-<step>/, final/, rollouts/
    # rollout
    engine: str = "auto"  # vllm | hf | auto (vllm; when it does not import: hf on CPU, an error on a GPU)
    rollout_batch_size: int = 1024  # prompts per RL step, all ranks together
    n_samples_per_prompt: int = 8  # responses sampled per prompt
    temperature: float = 0.6  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts (1: off)
    prompt_max_len: int = 1024  # prompt tokens (see --long-prompts)
    long_prompts: str = "truncate"  # longer prompts (counted): truncate (v0: keep the first tokens) | drop
    generate_max_len: int = 3000  # most new tokens per response
    stop: str = "</s>"  # extra stop strings, comma-separated (v0: "</s>"; the stop-word tokens always stop)
    min_new_tokens: int = 1  # v0's vLLM min_tokens=1: no stop token as the first token (the sampler masks it)
    vllm_gpu_memory_utilization: float = 0.5  # GPU memory share: vLLM weights + KV cache (asleep in training)
    vllm_sleep_level: int = 2  # 2: weights and KV cache freed (the weights are re-streamed after every update
    #   anyway); 1: weights copied to pinned host memory (~15 GB per rank at 7B, every step), KV cache freed
    reward_timeout: float = 5.0  # seconds per answer comparison (reward.batch_compute_scores)
    reward_workers: int = -1  # grading subprocesses per rank (-1: reward.py's default; 0: in-process)
    grader: str = "v0"  # training reward: v0 (simpleRL v0's verdicts) | simplerl (reward.py's; evals use it)
    # PPO
    actor_lr: float = 5e-7  # peak learning rate of the policy
    critic_lr: float = 9e-6  # peak learning rate of the critic (trunk + value head)
    adam_beta1: float = 0.9  # AdamW betas [--adam_betas], both networks
    adam_beta2: float = 0.95  # AdamW second-moment decay
    weight_decay: float = 0.0  # AdamW decoupled weight decay, both networks [--l2]
    warmup_ratio: float = 0.03  # linear warm-up over ceil(0.03 x optimizer steps), then cosine
    min_lr_ratio: float = 0.1  # cosine floor: 0.1 x peak (OpenRLHF cosine_with_min_lr)
    max_grad_norm: float = 1.0  # global gradient-norm clip per network [--max_norm]
    kl_coef: float = 0.01  # fixed beta in r_t = -beta * kl_t (+ the score on the last token) [--init_kl_coef]
    kl_estimator: str = "k1"  # k1 | k2 | k3, per token in the reward
    advantage: str = "gae"  # gae: PPO with a critic and GAE (v0) | no critic, the KL reward per token as in
    #   gae, the score replaced by: grpo: its z-score within its prompt's n samples (group_advantages) |
    #   drgrpo: minus the group mean, no std (Dr. GRPO; with --loss-agg seq-mean-token-sum-norm) | rloo: minus
    #   the mean of the other n-1 | reinforce++: the score itself, the reward-to-go whitened over the batch
    old_logprobs: str = "trainer"  # log pi_old: a no-grad forward of the actor (v0) | sampler: the rollout
    #   engine's own log-probs of the sampled tokens (one forward fewer; the same policy, fp32 CPU gap ~1e-7)
    gamma: float = 1.0  # GAE discount: delta_t = r_t + gamma V_{t+1} - V_t
    lam: float = 0.95  # GAE lambda: A_t = delta_t + gamma * lam * A_{t+1} [--lambd]
    clip_eps: float = 0.2  # policy loss: -min(rho A, clip(rho, 1 - eps, 1 + eps) A) [--eps_clip]
    clip_eps_high: float = 0.0  # the upper clip 1 + eps_high (DAPO's clip-higher: 0.28); 0: = --clip-eps
    tis_cap: float = 0.0  # truncated importance sampling: each token's policy loss x min(pi_old / pi_sampler,
    #   C), pi_sampler the engine's own log-probs (tis_weights); 0: off (v0)
    dynamic_sampling: bool = False  # drop groups whose n scores are all equal (zero advantage) and draw more
    #   prompts until rollout_batch_size groups with a spread are kept (DAPO; fill_groups)
    overlong: str = "none"  # truncated responses: none (v0) | filter: they carry no loss | shape: score +
    #   overlong_penalty, a linear penalty over the last --overlong-buffer tokens of --generate-max-len (DAPO)
    overlong_buffer: int = 0  # tokens before the budget's end where --overlong shape's penalty starts (> 0)
    overlong_penalty_factor: float = 1.0  # --overlong shape's penalty at the budget's last token
    value_clip: float = 0.2  # value loss: max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2) / 2
    entropy_coef: float = 0.0  # entropy is always logged; > 0 adds -coef * H to the policy loss
    logprob_temperature: float = 1.0  # old/new/reference log-probs from logits / this (v0: 1, the raw logits,
    #   while sampling at 0.6); = --temperature scores the distribution that was sampled (clip and KL on the
    #   tempered policy)
    loss_agg: str = "seq-mean-token-mean"  # v0: mean over each sequence's tokens, then over sequences (policy
    #   and value); token-mean: one mean over every token of the mini-batch (long responses weigh more; no
    #   per-sequence length bias); seq-mean-token-sum-norm: each sequence's token sum / --generate-max-len,
    #   then the mean over sequences (Dr. GRPO)
    value_head_init: str = "normal"  # v0: normal(0, std = 1/(hidden+1)) (OpenRLHF) | zeros (V = 0 at first)
    ppo_epochs: int = 1  # passes over each RL step's responses [--max_epochs]
    train_batch_size: int = 128  # responses per optimizer step, all ranks together
    micro_train_batch_size: int = 2  # responses per forward+backward per rank (with --train-forward-tokens 0)
    train_forward_tokens: int = 16384  # > 0: a mini-batch's rows balanced over ranks, packed in passes of <=
    #   this many tokens, experience forwards packed too (runtime.balanced_passes; same gradient); 0: padded
    micro_rollout_batch_size: int = 0  # most responses per no-grad experience forward per rank (0: no cap)
    rollout_forward_tokens: int = 8192  # and at most this many tokens per such forward (2 x the longest row):
    #   each one re-gathers the model (OpenRLHF's micro_rollout_batch_size=2: ~1,536 forwards per rank at 7B)
    whiten_advantages: bool = True  # gae's advantages to mean 0, std 1 over the batch's valid tokens
    critic_warmup_steps: int = 0  # RL steps that train only the critic [--freezing_actor_steps] (gae only)
    num_episodes: int = 20  # passes over the prompts; sets the number of RL steps when --max-steps <= 0
    max_steps: int = -1  # RL steps (> 0 overrides num_episodes)
    time_limit_minutes: float = 0.0  # stop the RL loop after this much wall time (0: no limit)
    # system
    device: str = "auto"  # auto: CUDA when torch sees it, else CPU for small models only | cuda | cpu
    gradient_checkpointing: str = "auto"  # recompute activations in backward (less memory, more compute, same
    #   gradient): on | off | auto: on where the memory plan's training peak without it exceeds 90% of the GPU
    seed: int = 42  # prompt order, sampling, value-head init
    eval_every: int = 0  # RL steps between held-out greedy evals (0: only at start and end)
    eval_size: int = 0  # problems per eval, a seeded sample of the test file (0: all)
    eval_batch_size: int = 64  # prompts per generate call per rank in eval
    save_every: int = 4  # RL steps between resumable checkpoints [--save_steps]; 0: only final/
    async_save: bool = True  # rank 0 writes a checkpoint's files on a thread while training goes on
    keep_checkpoints: int = 2  # newest checkpoints kept resumable (critic, optimizers: ~300 GB at 7B; 0: all)
    keep_actor_weights: bool = True  # every checkpoint's actor/ kept (v0 kept all; the paper's is step 120)
    dump_rollouts_every: int = 10  # RL steps between rollouts/step_<N>.jsonl dumps (rank 0's samples)
    resume: bool = False  # continue from the newest intact checkpoint-<step>/ (the config must match)
    overwrite: bool = False  # start over in an output_dir that holds another run, deleting that run's files


PRESETS = {
    # The CPU world: a ~1M-parameter Qwen2 (data/tiny) on the synthetic arithmetic task, fp32, HF generate.
    # --model is an early SFT checkpoint (low accuracy). Tuned so 250 RL steps (~10 minutes on 2 CPU cores)
    # lift held-out greedy accuracy by > 20 points (a fixed step count, not a time limit: the same run on any
    # machine): larger learning rates and KL coefficient than the 7B recipe, temperature 1, a short critic
    # warm-up (the critic starts as a copy of the SFT model + a zero head). It keeps the settings its targets
    # were measured with, where they differ from v0's: token-mean losses, a zero value head, reward.py's own
    # grader, no "</s>" stop string, min_new_tokens 0 (docs/fidelity.md: the tiny world's table). Its
    # log-probs are at T = 1 either way (temperature 1).
    "tiny": dict(model="data/tiny", train_file="data/synth/train.jsonl", test_file="data/synth/test.jsonl",
                 levels="1,2", template="tiny", output_dir="runs/ppo-tiny", engine="hf",
                 rollout_batch_size=32, n_samples_per_prompt=8, temperature=1.0, prompt_max_len=32,
                 generate_max_len=48, reward_workers=0, actor_lr=1e-4, critic_lr=5e-4, kl_coef=0.02,
                 train_batch_size=64, micro_train_batch_size=32, micro_rollout_batch_size=128,
                 rollout_forward_tokens=4096,  # 64-row forwards: ~20% faster here than 128 (cache-sized)
                 critic_warmup_steps=30, max_steps=250, gradient_checkpointing="off",
                 train_forward_tokens=0, seed=0, eval_every=100, eval_size=0, eval_batch_size=640,
                 save_every=100, dump_rollouts_every=50, loss_agg="token-mean", value_head_init="zeros",
                 grader="simplerl", stop="", min_new_tokens=0, logprob_temperature=1.0),
}


# ---- the math of PPO, on [batch, time] tensors of response tokens (mask: 1 = a generated token) ----
def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence"):
    k1 = log r,  k2 = (log r)^2 / 2,  k3 = (r^-1 - 1) + log r,  where log r = log pi - log pi_ref.
    k1 is unbiased but can be negative per token; k3 is unbiased and >= 0; k2 is biased, >= 0."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2, k3)")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row (the EOS, or the last token of a truncated response)."""
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, -1).max(dim=1).values.clamp(min=0)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -kl_coef * kl_t on every token, plus the rule score on the last valid token (not on a pad)."""
    rewards = -kl_coef * kl * mask
    rewards[torch.arange(len(scores)), last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, backwards in time:
        delta_t = r_t + gamma * V_{t+1} - V_t          (V = 0 after the last valid token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                            (the critic's regression target)
    Padding positions carry nothing across (their A and V are treated as 0) and come out 0."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m
        next_value = values[:, t] * m
        next_advantage = advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, distributed: bool = False,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the valid tokens only (padding contributes nothing; it comes out 0);
    distributed=True takes mean and std over the valid tokens of every rank."""
    stats = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
    if distributed:
        dist.all_reduce(stats)
    mean = stats[0] / stats[2]
    var = (stats[1] / stats[2] - mean * mean).clamp(min=0)
    return ((x - mean.to(x.dtype)) * torch.rsqrt(var + eps).to(x.dtype)) * mask


def as_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """G x n: the groups of responses sampled for the same prompt, one after another in `scores` (the n
    samples of a prompt are neighbours, as both engines return them)."""
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size} (>= 2)")
    return scores.reshape(-1, group_size)


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-6, std: bool = True
                     ) -> torch.Tensor:
    """GRPO's outcome advantage (DeepSeekMath, Shao et al. 2024, sec. 4.1.2; SimpleRL-Zoo's estimator): each
    response's score normalised within the group of responses sampled for the same prompt,
        A_i = (r_i - mean(r_group)) / (std(r_group) + eps),
    std the sample standard deviation (n - 1, torch.std's default). std=False is Dr. GRPO's (Liu et al. 2025):
        A_i = r_i - mean(r_group)
    (dividing by the std weighs groups that are nearly all right or all wrong up). A group whose responses all
    scored alike gets 0: it says nothing about which response is better."""
    groups = as_groups(scores, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if not std:
        return centred.reshape(scores.shape)
    return (centred / (groups.std(dim=1, keepdim=True) + eps)).reshape(scores.shape)


ADVANTAGES = ("gae", "grpo", "drgrpo", "rloo", "reinforce++")


LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_agg: str = "seq-mean-token-mean",
              denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a [batch, time] per-token loss to a scalar.
        seq-mean-token-mean (v0, OpenRLHF 0.5 models/loss.py):  1/S   sum_s (1/|s| sum_{t in s} l_t)
        token-mean:                                             1/N   sum_s sum_{t in s} l_t
        seq-mean-token-sum-norm (Dr. GRPO):                     1/S   sum_s (1/L sum_{t in s} l_t)
    L a constant (ppo_update: --generate-max-len; here the batch's width), so no response's tokens weigh
    more for being short. `denom` replaces S (the number of sequences), N (the number of valid tokens) or
    S x L of this batch: with the counts of the whole mini-batch (all micro-batches and ranks), the
    accumulated gradient is the mini-batch's."""
    if loss_agg == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / (per_seq.numel() if denom is None else denom)
    if loss_agg == "token-mean":
        return (per_token * mask).sum() / (mask.sum().clamp(min=1) if denom is None else denom)
    if loss_agg == "seq-mean-token-sum-norm":
        return (per_token * mask).sum() / (mask.size(0) * mask.size(-1) if denom is None else denom)
    raise ValueError(f"--loss-agg {loss_agg!r}: expected one of {', '.join(LOSS_AGGS)}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float, loss_agg: str = "seq-mean-token-mean",
                denom: float | torch.Tensor | None = None, clip_eps_high: float | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Clipped surrogate per token: l_t = max(-ratio_t A_t, -clip(ratio_t, 1 - eps, 1 + eps_high) A_t),
    ratio = pi / pi_old, eps_high = eps unless given (DAPO's clip-higher: a larger eps_high lets a token with
    A > 0 gain more probability before its gradient is cut, against entropy collapse); times w_t when
    `weights` are given (tis_weights); reduced by `aggregate`."""
    ratio = torch.exp(logp - old_logp)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    per_token = torch.max(-ratio * advantages, -ratio.clamp(1 - clip_eps, 1 + high) * advantages)
    if weights is not None:
        per_token = per_token * weights
    return aggregate(per_token, mask, loss_agg, denom)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_eps: float, loss_agg: str = "seq-mean-token-mean",
               denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Clipped value loss per token: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2),
    reduced by `aggregate`."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return aggregate(per_token, mask, loss_agg, denom)


# ---- the 2025 menu (docs/objectives.md): more baselines, DAPO's filters, the sampler correction ----
def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): each score minus the mean of the other n - 1 scores of its group,
        A_i = r_i - 1/(n-1) sum_{j != i} r_j   (= n/(n-1) (r_i - mean(r_group))),
    a baseline that does not depend on r_i itself, so the policy gradient stays unbiased."""
    groups = as_groups(scores, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(scores.shape)


def zero_variance_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """G booleans: True where every score of the group is the same (all right, or all wrong alike): every
    group-baselined advantage of it is 0, so it trains nothing (DAPO's dynamic sampling drops these)."""
    groups = as_groups(scores, group_size)
    return (groups == groups[:, :1]).all(dim=1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the score: 0 up to max_len - buffer
    tokens, then falling linearly to -factor at max_len (the budget's last token, a truncated response):
        penalty(|y|) = -factor * clip((|y| - (max_len - buffer)) / buffer, 0, 1)."""
    return -factor * ((lengths.float() - (max_len - buffer)) / buffer).clamp(0, 1)


def overlong_filter(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO's overlong filtering: a truncated response (no stop token within the budget) carries no loss,
        m'_t = m_t * [response not truncated];
    its score says nothing about the answer it had no room to give."""
    return mask * (~truncated.bool()).to(mask.dtype).unsqueeze(-1)


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): the rollout engine samples from pi_sampler (another kernel, bf16), the loss
    assumes pi_old; each token's policy-gradient term is reweighted by
        w_t = min(pi_old(y_t) / pi_sampler(y_t), C) = min(exp(log pi_old - log pi_sampler), C),
    exactly 1 where the two agree; the cap C bounds the variance."""
    return torch.exp(old_logp - sampler_logp).clamp(max=cap)


# ---- models: the actor, the frozen reference, the critic (trunk + value head) ----
class Critic(torch.nn.Module):
    """V(prefix): the base model's trunk (no LM head) + a value head Linear(hidden, 1, bias=False).
    `self.model` is the trunk so runtime.shard_model (model.model.layers) shards it the same way.
    init "normal": v0's value head, w ~ normal(0, std = 1 / (hidden + 1)) (OpenRLHF 0.5 models/model.py, the
    std, not the variance), drawn from `seed` so every rank holds the same head; "zeros": V = 0 until the
    critic learns."""

    def __init__(self, causal_lm: torch.nn.Module, init: str = "normal", seed: int = 0):
        super().__init__()
        self.config = causal_lm.config
        self.model = causal_lm.model
        self.value_head = torch.nn.Linear(self.config.hidden_size, 1, bias=False)
        if init == "normal":
            with torch.no_grad():
                self.value_head.weight.normal_(0.0, 1.0 / (self.config.hidden_size + 1),
                                               generator=torch.Generator().manual_seed(seed))
        elif init == "zeros":
            torch.nn.init.zeros_(self.value_head.weight)
        else:
            raise ValueError(f"--value-head-init {init!r}: expected normal or zeros")

    def forward(self, input_ids, attention_mask, position_ids, response_len: int) -> torch.Tensor:
        mask = runtime.attention_mask_or_none(attention_mask)  # no cache: transformers then sees packed rows
        hidden = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                            use_cache=False).last_hidden_state
        # V_t at the positions token_logprobs reads its logits from: hidden[:, -R-1:-1] (packed: the index),
        # the R states that PREDICT the response's R tokens, so V_t is the value of the prefix before token t
        # (the state in which the policy chose a_t), aligned column for column with log pi(a_t) and the mask.
        at = hidden[:, -response_len - 1: -1] if isinstance(response_len, int) else hidden[0, response_len]
        values = self.value_head(at).float().squeeze(-1)
        return values.clone()  # clone: no view out of FSDP


def load_critic(path: str, seed: int, gradient_checkpointing: bool, init: str = "normal") -> Critic:
    """A critic folder written by save_critic (trunk + value_head.weight), or any causal LM (a new head,
    `init`)."""
    critic = Critic(runtime.load_model(path, seed, gradient_checkpointing), init, seed)
    from safetensors import safe_open
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            if "value_head.weight" in st.keys():
                critic.value_head.weight.data.copy_(st.get_tensor("value_head.weight"))
    return critic


def save_critic(model, tokenizer, out_dir: str) -> None:  # the critic's folder: model.*, value_head.weight
    runtime.save_hf_checkpoint(model, tokenizer, out_dir, whole_state=True)


def load_models(cfg: Config, resume_from: Path | None, device) -> tuple:
    """actor (trained), reference (frozen), critic (trunk + value head); all FSDP2-sharded. One at a time:
    each is loaded on the host, sharded (each rank keeps 1/world of it) and only then the next is loaded, so a
    rank's host never holds more than one full copy; the reference in bf16 on GPU (it is only ever run in
    bf16)."""
    actor = runtime.load_model(str(resume_from / "actor") if resume_from else cfg.model, cfg.seed,
                               cfg.gradient_checkpointing == "on")
    runtime.disable_dropout(actor)
    actor = runtime.shard_model(actor, device)
    ref_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ref = runtime.load_model(cfg.model, cfg.seed, False, dtype=ref_dtype)
    runtime.disable_dropout(ref)
    ref.requires_grad_(False)
    ref = runtime.shard_model(ref, device)
    ref.eval()
    actor.train()
    if cfg.advantage != "gae":  # no value network: none loaded, trained, saved or planned for
        return actor, ref, None
    critic = load_critic(str(resume_from / "critic") if resume_from else (cfg.critic_model or cfg.model),
                         cfg.seed, cfg.gradient_checkpointing == "on", cfg.value_head_init)
    runtime.disable_dropout(critic)
    critic = runtime.shard_model(critic, device)
    critic.train()
    return actor, ref, critic


def token_logprobs(model, input_ids, attention_mask, position_ids, response_len: int | torch.Tensor,
                   temperature: float, with_entropy: bool | str = False) -> tuple[torch.Tensor, ...]:
    """log pi(y_t | y_<t) of the response tokens under log_softmax(logits / T) (T = --logprob-temperature: 1
    in v0, the raw logits; the sampling temperature gives the distribution the engine sampled from), and
    optionally the entropy of that distribution. Logits at position i predict the token at i+1, so the
    response's R tokens are predicted by the last R+1 positions but one; a packed pass (runtime.pack_rows:
    response_len is then the index of the predicting positions) gets them in pieces (packed_logprobs)."""
    def from_logits(logits, targets):
        logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1: no copy
        log_z = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
        if not with_entropy:
            return logp, None
        with torch.set_grad_enabled(with_entropy == "grad" and torch.is_grad_enabled()):  # H = log Z - E[l]
            return logp, log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    if not isinstance(response_len, int):
        return runtime.packed_logprobs(model, input_ids, position_ids, response_len, from_logits,
                                       bool(with_entropy))
    logits = model(input_ids=input_ids, attention_mask=runtime.attention_mask_or_none(attention_mask),
                   position_ids=position_ids, logits_to_keep=response_len + 1).logits[:, :-1]
    return from_logits(logits, input_ids[:, -response_len:])


# ---- rollouts: the weight-sync protocol between the trainer and the rollout engine ----
def stream_weights(model: torch.nn.Module,
                   dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter in the module's fixed order, each shard cast to `dtype` before
    the gather (bf16 on GPU: half the bytes). full_tensor() is a collective: all ranks run it to the end."""
    for name, p in model.named_parameters():
        t = p.detach() if dtype is None else p.detach().to(dtype)
        yield name, (t.full_tensor() if isinstance(t, DTensor) else t)


@torch.no_grad()
def sync_weights(actor: torch.nn.Module, engine, version: int) -> None:
    """Make the engine hold the actor's weights, called before EVERY generate. `version` counts the actor's
    updates; the engine records the version it holds (`weights_version`) and forgets it when its weights are
    discarded (vLLM sleep level 2), so this streams exactly when needed: every parameter into the engine's
    load_weights, then cached prefixes are dropped (their KV entries came from the old weights).
    Every rank calls this at the same points (full_tensor is a collective),
    and every rank's engine is in the same state, so all ranks take the same branch."""
    if engine.weights_version == version:
        return
    engine.load_weights(stream_weights(actor, engine.dtype))
    engine.reset_prefix_cache()
    engine.weights_version = version


def make_engine(cfg: Config, model_config, tokenizer, rank: int, world: int, device):
    """The rollout engine, colocated: every rank runs its own (vLLM in this process, asleep while the
    trainer runs; or HF generate on an unsharded copy), sampling its share of the prompts with no collectives
    (runtime.VLLMEngine, runtime.HFEngine). Built last, after the trainer's models are sharded. Its weights
    are not the actor's until the first sync_weights (weights_version None). Returns (engine, stop ids)."""
    vocab = tokenizer.get_vocab()
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(w) for w in reward.STOP_WORDS if w in vocab}
                      | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    stop_strings = [s for s in cfg.stop.split(",") if s]
    kind = runtime.choose_engine(cfg.engine, device)  # auto: vLLM, or on a GPU an error saying why not
    runtime.announce(cfg.output_dir, kind, device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                     world, rank)
    if kind == "vllm":
        return runtime.VLLMEngine(cfg, rank, world, stop_ids, stop_strings, device), stop_ids
    if kind == "hf":
        # its random init (overwritten by sync_weights) draws nothing from the samples' RNG
        with torch.random.fork_rng(devices=[]):
            model = AutoModelForCausalLM.from_config(model_config, attn_implementation="sdpa")
        engine = runtime.HFEngine(model, tokenizer, stop_ids, stop_strings, device,
                                  logprob_temperature=cfg.logprob_temperature,
                                  min_new_tokens=cfg.min_new_tokens)
        return engine, stop_ids
    raise ValueError(f"--engine {cfg.engine!r}: expected hf, vllm or auto")


def rollout(engine, tokenizer, prompts: list[dict], cfg: Config, times: dict) -> list[tuple]:
    """Steps 2 and 3 for some prompts: n samples each (the engine wakes, samples, sleeps again), decoded and
    scored. One (sample, text, gold, score) per response, a prompt's n responses next to each other."""
    with runtime.timer(times, "generate"):
        samples = engine.generate([r["ids"] for r in prompts], cfg.n_samples_per_prompt, cfg.temperature,
                                  cfg.top_p, cfg.generate_max_len)
        engine.sleep()
    with runtime.timer(times, "score"):
        texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=False)
        golds = [r["gold"] for r in prompts for _ in range(cfg.n_samples_per_prompt)]
        scores = reward.batch_compute_scores(texts, golds, cfg.reward_timeout,
                                             None if cfg.reward_workers < 0 else cfg.reward_workers,
                                             grader=cfg.grader)
    return list(zip(samples, texts, golds, scores))


def fill_groups(draw, need: int, group_size: int, dynamic: bool, max_draws: int,
                all_ranks=lambda ok: ok) -> tuple[list[tuple], dict]:
    """The step's `need` groups of `group_size` responses, and counts. Without dynamic sampling: one draw,
    kept whole. With it (DAPO's): groups whose scores are all equal (zero_variance_groups) are dropped and
    draw(k), the k-th further batch of prompts, is called until `need` groups are kept (the first `need` are
    used); after `max_draws` draws (a pass over the training prompts) it stops with an error. `all_ranks(ok)`:
    True when ok holds on every rank, so every rank draws the same number of times."""
    kept, counts = [], {"draws": 0, "groups": 0, "zero_variance": 0}
    while counts["draws"] == 0 or (dynamic and not all_ranks(len(kept) >= need)):
        if counts["draws"] >= max_draws:
            raise SystemExit(f"--dynamic-sampling: {len(kept)} of {need} groups have a spread of scores "
                             f"after {counts['draws']} batches of prompts (a pass over the training "
                             "prompts): the policy solves nearly every prompt or none; use other prompts "
                             "or turn it off")
        rows = draw(counts["draws"])
        scores = torch.tensor([r[3] for r in rows], dtype=torch.float64)
        zero = zero_variance_groups(scores, group_size) if group_size > 1 else torch.zeros(len(rows)).bool()
        groups = [rows[g * group_size: (g + 1) * group_size] for g in range(len(zero))]
        kept += [g for g, z in zip(groups, zero.tolist()) if not (dynamic and z)]
        counts["draws"] += 1
        counts["groups"] += len(groups)
        counts["zero_variance"] += int(zero.sum())
    return [r for g in kept[:need] for r in g], counts


# ---- experience: samples -> padded tensors -> log-probs, values, rewards, advantages ----
# The batch: one dict of CPU tensors per RL step, B = responses on this rank, P = longest prompt, R = longest
# response (>= 1); response-aligned columns t = 0..R-1 are the response's tokens. Filled in this order:
#   key             shape       dtype    filled by
#   input_ids       B x (P+R)   int64    pad_samples: prompt left-padded to P | response right-padded to R
#   attention_mask  B x (P+R)   int64    pad_samples: 1 on real tokens
#   position_ids    B x (P+R)   int64    pad_samples: counts real tokens only (left padding shifts nothing)
#   response_mask   B x R       float32  pad_samples: 1 on response tokens (the mask m of every sum)
#   loss_mask       B x R       float32  pad_samples: = response_mask, the mask of the losses;
#                                        advantages_and_returns: 0 on truncated rows (--overlong filter)
#   old_logp        B x R       float32  experience_forward: log pi_old(a_t), the sampling actor (0 on pads)
#   ref_logp        B x R       float32  experience_forward: log pi_ref(a_t), the frozen reference (0 on pads)
#   values          B x R       float32  experience_forward: V_old(s_t) of the critic (0 on pads)
#   rewards         B x R       float32  advantages_and_returns: -kl_coef * kl_t, + the score on the last
#   returns         B x R       float32  advantages_and_returns: A_t + V_old(s_t) (the value target)
#   advantages      B x R       float32  advantages_and_returns: compute_gae, then masked_whiten
#   tis_weight      B x R       float32  experience_forward, only with --tis-cap: tis_weights (0 on pads)
# micro_batches slices rows of it (trimmed to their own longest prompt and response) and adds "R": int.
# tests/test_shape.py checks a tiny batch has exactly these keys, shapes and dtypes.
def pad_samples(samples: list[runtime.Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """[prompt left-padded to P | response right-padded to R]. Position ids count only real tokens (as the
    sampler's did), so left padding does not shift them."""
    P = max(len(s.prompt_ids) for s in samples)
    R = max(max(len(s.response_ids) for s in samples), 1)
    B = len(samples)
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    for i, s in enumerate(samples):
        p, r = s.prompt_ids, s.response_ids
        ids[i, P - len(p): P] = torch.tensor(p)
        ids[i, P: P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p): P + len(r)] = 1
    return {"input_ids": ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
            "response_mask": attn[:, P:].float(), "loss_mask": attn[:, P:].float()}


@torch.no_grad()
def experience_forward(actor, ref, critic, batch: dict, cfg: Config, device,
                       samples: list[runtime.Sample] | None = None) -> None:
    """old log-probs (actor), reference log-probs, values (0 with no critic): no-grad, in groups of rows that
    fit --rollout-forward-tokens (every rank runs the same number of forwards: the FSDP all-gathers must pair
    up). Few, large forwards: each one re-gathers every sharded layer, so the count of forwards is what
    costs. --old-logprobs sampler: the old log-probs are the samples' engine_logprobs (no actor forward)."""
    B, R_full = batch["response_mask"].shape
    for key in ("old_logp", "ref_logp", "values"):
        batch[key] = torch.zeros(B, R_full)
    from_sampler = cfg.old_logprobs == "sampler"
    if from_sampler:
        batch["old_logp"] = runtime.sampler_logprobs(samples, R_full)
    cap, tok, packed = cfg.micro_rollout_batch_size, cfg.rollout_forward_tokens, cfg.train_forward_tokens > 0
    for group in runtime.forward_groups(batch, cap, tok, packed):  # packed: one sequence, no padding
        mb = runtime.forward_batch(batch, group, device, packed)
        args = (mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["R"])
        rows, R = torch.tensor(group), mb["response_mask"].size(1)
        # FSDP2 keeps a root's parameters (embeddings, final norm, head) gathered after a forward until its
        # backward, which the frozen reference never runs: reshard each network's root after its forward
        if not from_sampler:
            batch["old_logp"][rows, :R] = token_logprobs(actor, *args, cfg.logprob_temperature)[0].cpu()
            runtime.reshard_root(actor)
        ref_logp = token_logprobs(ref, *args, cfg.logprob_temperature)[0]
        runtime.reshard_root(ref)
        batch["ref_logp"][rows, :R] = ref_logp.cpu().float()
        if critic is not None:
            batch["values"][rows, :R] = critic(*args).cpu()
            runtime.reshard_root(critic)
    m = batch["response_mask"]
    for key in ("old_logp", "ref_logp", "values"):
        batch[key] *= m  # padding: exactly 0
    if cfg.tis_cap > 0:
        sampler = runtime.sampler_logprobs(samples, R_full, "tis-cap")
        batch["tis_weight"] = tis_weights(batch["old_logp"], sampler, cfg.tis_cap) * m


def advantages_and_returns(batch: dict, scores: list[float], cfg: Config,
                           truncated: list[bool] | None = None) -> None:
    """Steps 5 and 6: the KL-shaped per-token reward, the advantages and the critic's targets.
    gae: r_t = -beta kl_t + [t = last] score; GAE with the critic's values; whitened (--whiten-advantages).
    grpo: the same reward with the score replaced by its group-normalised value (group_advantages); no critic
    (V = 0) and lam = 1 make GAE the reward-to-go, A_t = sum_{t' >= t} gamma^(t'-t) r_t': the normalised score
    on every token of the response (DeepSeekMath's outcome supervision) plus the KL still to come. Not
    whitened: the group normalisation is GRPO's. Where the KL goes: DeepSeekMath (and SimpleRL-Zoo, verl's
    kl_loss) add beta * KL (k3) to the loss instead of the reward; this keeps the recipe's place, the reward
    (as OpenRLHF's group_norm estimator does when the KL is not a loss term), so that --advantage changes
    only the advantage: the same KL coefficient and estimator weigh the same KL in both runs.
    drgrpo and rloo: as grpo with their own baseline (group_advantages(std=False), rloo_advantages).
    reinforce++ (Hu 2025): the raw score, the reward-to-go whitened over every valid token of the batch.
    --overlong shape adds overlong_penalty to the score first; filter zeroes truncated rows' loss_mask."""
    m = batch["response_mask"]
    kl = kl_penalty(batch["old_logp"], batch["ref_logp"], cfg.kl_estimator) * m
    outcome = torch.tensor(scores)
    if cfg.overlong == "shape":
        outcome = outcome + overlong_penalty(m.sum(1), cfg.generate_max_len, cfg.overlong_buffer,
                                             cfg.overlong_penalty_factor)
    if cfg.overlong == "filter":
        batch["loss_mask"] = overlong_filter(batch["loss_mask"], torch.tensor(truncated))
    if cfg.advantage in ("grpo", "drgrpo"):
        outcome = group_advantages(outcome, cfg.n_samples_per_prompt, std=cfg.advantage == "grpo")
    elif cfg.advantage == "rloo":
        outcome = rloo_advantages(outcome, cfg.n_samples_per_prompt)
    batch["rewards"] = shape_rewards(outcome, kl, m, cfg.kl_coef)
    lam = cfg.lam if cfg.advantage == "gae" else 1.0
    adv, batch["returns"] = compute_gae(batch["rewards"], batch["values"], m, cfg.gamma, lam)
    whiten = cfg.advantage == "reinforce++" or (cfg.whiten_advantages and cfg.advantage == "gae")
    batch["advantages"] = masked_whiten(adv, batch["loss_mask"], distributed=True) if whiten else adv


# ---- the update ----
@dataclass
class Learner:
    """One trained network with its optimizer, LR schedule and gradient clip: what ppo_update steps and a
    checkpoint saves and restores. The critic's Learner may be None (no value network) wherever it is
    passed."""
    name: str  # "actor" | "critic": the key of its metrics and of its parts of a checkpoint
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    max_norm: float  # global gradient-norm clip

    def step(self) -> float:
        """Clip the global gradient norm, step, zero the gradients, advance the schedule; returns the norm."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        if not runtime.to_host(torch.isfinite(norm)):
            raise FloatingPointError(f"non-finite {self.name} gradient norm")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm.detach()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


def make_learner(name: str, model: torch.nn.Module, lr: float, cfg: Config, total_updates: int) -> Learner:
    """AdamW with the recipe's betas (0.9, 0.95) and weight decay; linear warm-up over 3% of the optimizer
    steps, then cosine down to min_lr_ratio x lr (runtime.make_optimizer)."""
    return Learner(name, model, *runtime.make_optimizer(model, lr, cfg, total_updates), cfg.max_grad_norm)


def ppo_update(actor: Learner, critic: Learner | None, batch: dict, cfg: Config, world: int, device,
               train_actor: bool, generator: torch.Generator) -> dict:
    """PPO epochs over mini-batches (one optimizer step each) of train_batch_size responses, in passes (packed
    and balanced across ranks, or micro-batches). Each pass's loss is a sum (over its sequences' token means,
    or its tokens, --loss-agg) divided by the mini-batch's count on all ranks (sequences or valid tokens) /
    world (FSDP averages gradients over ranks): the accumulated gradient is the whole mini-batch's loss's
    however its rows are split over ranks and passes. No set_requires_gradient_sync(False) between passes:
    FSDP2 would keep full-size fp32 gradients on every rank until the last (~30 GB for the 7B actor, as
    much again for the critic); each backward reduce-scatters, sharded gradients accumulate (as sft.py's)."""
    B = batch["response_mask"].size(0)
    per_rank = cfg.train_batch_size // world
    sums = runtime.Sums("pg_loss", "v_loss", "entropy", "clipfrac", "clipfrac_low", "clipfrac_high",
                        "approx_kl", "vf_clipfrac", "tokens", device=device)  # on the device: no host syncs
    norms = {"actor_grad_norm": [], "critic_grad_norm": []}
    learners = [x for x in (actor if train_actor else None, critic) if x is not None]
    n_minibatches = 0
    length = batch["attention_mask"].sum(1).tolist()  # real tokens per row (prompt + response)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator).tolist()
        for start in range(0, B - per_rank + 1, per_rank):
            # a random mini-batch: packed passes balanced across ranks, or micro-batches taking its rows by
            # length (runtime.update_passes): the same gradient either way (a sum over the mini-batch)
            idx = sorted(order[start: start + per_rank], key=lambda i: length[i])
            denom = minibatch_count(batch, idx, cfg, device) / world
            n_minibatches += 1
            finite = torch.ones((), device=device)
            for mb in runtime.update_passes(batch, idx, cfg, device):
                args = (mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["R"])
                mask = mb["loss_mask"]
                if train_actor:
                    logp, entropy = token_logprobs(actor.model, *args, cfg.logprob_temperature,
                                                   with_entropy="grad" if cfg.entropy_coef else True)
                    pg = policy_loss(logp, mb["old_logp"], mb["advantages"], mask, cfg.clip_eps, cfg.loss_agg,
                                     denom, cfg.clip_eps_high or None, mb.get("tis_weight"))
                    loss = pg
                    if cfg.entropy_coef:  # an entropy bonus: - coef * H
                        loss = pg - cfg.entropy_coef * aggregate(entropy, mask, cfg.loss_agg, denom)
                    finite *= torch.isfinite(loss.detach()).float()
                    loss.backward()
                    add_policy_stats(sums, pg, logp, entropy, mb, cfg.clip_eps, cfg.clip_eps_high or None)
                if critic is not None:
                    values = critic.model(*args)
                    vl = value_loss(values, mb["values"], mb["returns"], mask, cfg.value_clip, cfg.loss_agg,
                                    denom)
                    finite *= torch.isfinite(vl.detach()).float()
                    vl.backward()
                    clipped = ((values - mb["values"]).abs() > cfg.value_clip).float()
                    sums.add(v_loss=vl, vf_clipfrac=(clipped * mask).sum())
                sums.add(tokens=mask.sum())
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank stops together, before any step
            if runtime.to_host(finite) < 1:
                raise FloatingPointError("non-finite PPO loss (NaN/inf)")
            for learner in learners:
                norms[f"{learner.name}_grad_norm"].append(learner.step())
    metrics = update_metrics(sums.all_reduce(), norms, world * n_minibatches, train_actor)
    for k in ("v_loss", "vf_clipfrac") if critic is None else ():  # no critic (not --advantage gae)
        metrics.pop(k)
    return metrics


def minibatch_count(batch: dict, idx: list[int], cfg: Config, device) -> torch.Tensor:
    """The mini-batch's valid tokens (token-mean), sequences x --generate-max-len (seq-mean-token-sum-norm)
    or sequences, on all ranks: the loss's denominator."""
    rows = batch["loss_mask"][idx]
    count = rows.sum() if cfg.loss_agg == "token-mean" else torch.tensor(float(len(idx)))
    if cfg.loss_agg == "seq-mean-token-sum-norm":
        count = count * cfg.generate_max_len
    count = count.to(device, torch.float32)
    dist.all_reduce(count)
    return count


@torch.no_grad()
def add_policy_stats(sums: runtime.Sums, pg: torch.Tensor, logp, entropy, mb: dict, clip_eps: float,
                     clip_eps_high: float | None = None) -> None:
    """clipfrac: |ratio - 1| > eps; clipfrac_low / _high: the tokens whose gradient the clip cuts (ratio below
    1 - eps with A < 0, above 1 + eps_high with A > 0)."""
    mask, log_ratio, adv = mb["loss_mask"], logp - mb["old_logp"], mb["advantages"]
    ratio, high = log_ratio.exp(), clip_eps if clip_eps_high is None else clip_eps_high
    sums.add(pg_loss=pg,  # this rank's part of the mini-batch loss x world
             entropy=(entropy * mask).sum(), clipfrac=(((ratio - 1).abs() > clip_eps).float() * mask).sum(),
             clipfrac_low=(((ratio < 1 - clip_eps) & (adv < 0)).float() * mask).sum(),
             clipfrac_high=(((ratio > 1 + high) & (adv > 0)).float() * mask).sum(),
             approx_kl=(kl_penalty(logp, mb["old_logp"], "k3") * mask).sum())


def update_metrics(out: dict[str, float], norms: dict[str, list[float]], n_losses: int,
                   train_actor: bool) -> dict:
    """Per-token means of the diagnostics; the losses as optimised (the mean over mini-batches and ranks of
    each one's loss); the mean gradient norms. No policy metrics in a critic warm-up step."""
    tokens = max(out.pop("tokens"), 1.0)
    result = {k: v / tokens for k, v in out.items()}
    for k in ("pg_loss", "v_loss"):
        result[k] = out[k] / max(n_losses, 1)
    if not train_actor:
        for k in ("pg_loss", "entropy", "clipfrac", "clipfrac_low", "clipfrac_high", "approx_kl"):
            result.pop(k)
    for k, v in norms.items():
        if v:  # device tensors (Learner.step): one read per network
            result[k] = runtime.to_host(torch.stack(v).mean())
    return result


# ---- evaluation: held-out greedy accuracy ----
def greedy_accuracy(engine, actor, version: int, tokenizer, rows: list[dict], cfg: Config, rank: int,
                    world: int, device) -> float:
    """Held-out greedy accuracy of the actor's update `version` (the engine is synced first, as before every
    generate). A rank with no problems of its own generates nothing; the engines do not wait for each
    other."""
    sync_weights(actor, engine, version)
    mine = rows[rank::world]
    correct = 0
    if mine:
        samples = engine.generate([r["ids"] for r in mine], 1, 0.0, 1.0, cfg.generate_max_len,
                                  cfg.eval_batch_size)
        texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=False)
        scores = reward.batch_compute_scores(texts, [r["gold"] for r in mine], cfg.reward_timeout,
                                             None if cfg.reward_workers < 0 else cfg.reward_workers,
                                             grader="simplerl")  # evaluate.py's grader, whatever trains
        correct = sum(s == 1.0 for s in scores)
    engine.sleep()
    counts = runtime.global_sums({"correct": correct, "n": len(mine)}, device)
    return counts["correct"] / max(counts["n"], 1)


def held_out_eval(engine, actor, version: int, tokenizer, test_rows: list[dict], cfg: Config, rank: int,
                  world: int, device, step: int, tag: str) -> float | None:
    if not test_rows:
        return None
    t0 = time.perf_counter()
    acc = greedy_accuracy(engine, actor, version, tokenizer, test_rows, cfg, rank, world, device)
    runtime.print0(f"[eval {tag}] step {step}: held-out greedy accuracy {100 * acc:.1f}% "
                   f"on {len(test_rows)} problems ({time.perf_counter() - t0:.1f} s)")
    return acc


# ---- the RL loop ----
def main(cfg: Config) -> None:
    """Set up (checks, data, models, engine, learners, resume), then steps 1-7 of the module docstring once
    per RL step; the final model, held-out accuracy and a timing report at the end."""
    validate(cfg)
    reward.check_symbolic_grader()  # fails loudly when sympy's LaTeX parser is broken (e.g. the wrong antlr4)
    rank, world, device = runtime.init_distributed(cfg.device, [cfg.model, cfg.critic_model])
    per_rank_prompts = prompts_per_rank(cfg, world)
    out, resume_from = runtime.prepare_output_dir(cfg, rank, SAFE_ON_RESUME)
    torch.manual_seed(cfg.seed + rank)  # sampling differs per rank
    random.seed(cfg.seed + rank)
    tokenizer = runtime.load_tokenizer(cfg.model)
    rows, test_rows = load_data(cfg, tokenizer)
    total_steps, total_updates = count_steps(cfg, len(rows), len(test_rows), world)
    checkpointing = runtime.write_memory_plan(out, cfg.model, world, cfg, device, rank)  # decides auto
    cfg = dataclasses.replace(cfg, gradient_checkpointing="on" if checkpointing else "off")
    actor, ref, critic = load_models(cfg, resume_from, device)
    engine, _ = make_engine(cfg, actor.config, tokenizer, rank, world, device)  # last: after the trainer
    actor = make_learner("actor", actor, cfg.actor_lr, cfg, total_updates)
    if critic is not None:  # --advantage grpo: no critic
        critic = make_learner("critic", critic, cfg.critic_lr, cfg, total_updates)
    grad_bytes = runtime.record_grad_bytes(actor, critic)  # for memory_plan's check
    shuffle = torch.Generator().manual_seed(cfg.seed + rank)
    step, position, kept = start_or_resume(out, cfg, resume_from, actor, critic, shuffle, rank)
    version = 0  # the actor's weights: +1 per RL step that updates it; the engine records the one it holds
    if resume_from is None:
        acc0 = held_out_eval(engine, actor.model, version, tokenizer, test_rows, cfg, rank, world, device,
                             step, "start")
        if rank == 0 and acc0 is not None:
            runtime.log_metrics(out, {"step": step, "eval/accuracy": acc0})
    else:  # the start's accuracy is in the resumed run's log; evaluating again would add a second record
        acc0 = next((r["eval/accuracy"] for r in kept if "eval/accuracy" in r), None)
    bar = tqdm(total=total_steps, initial=step, disable=rank != 0, desc="ppo", dynamic_ncols=True,
               **runtime.progress_settings(sys.stderr, total_steps))
    t_start, phase_ms, last_ckpt, warned = time.perf_counter(), [], resume_from, set()
    try:
        while step < total_steps:
            times = {}
            with runtime.timer(times, "sync"):  # 1. sync (a no-op if the engine already holds this version)
                sync_weights(actor.model, engine, version)
            def draw(k: int) -> list[tuple]:  # 2. rollout  3. score: this rank's share of the k-th batch
                idx = runtime.prompts_at(position + k * cfg.rollout_batch_size, cfg.rollout_batch_size,
                                         len(rows), cfg.seed)[rank * per_rank_prompts:][:per_rank_prompts]
                return rollout(engine, tokenizer, [rows[i] for i in idx], cfg, times)
            kept, groups = fill_groups(draw, per_rank_prompts, cfg.n_samples_per_prompt, cfg.dynamic_sampling,
                                       -(-len(rows) // cfg.rollout_batch_size), runtime.on_every_rank)
            position += groups["draws"] * cfg.rollout_batch_size
            samples, texts, golds, scores = map(list, zip(*kept))
            with runtime.timer(times, "forward"):  # 4. forward  5. shape  6. GAE (and whitening) or GRPO
                batch = pad_samples(samples, tokenizer.pad_token_id)
                experience_forward(actor.model, ref, critic.model if critic else None, batch, cfg, device,
                                   samples)
                advantages_and_returns(batch, scores, cfg, [s.truncated for s in samples])
            with runtime.timer(times, "train"):  # 7. update
                train_actor = critic is None or step >= cfg.critic_warmup_steps  # no critic: nothing to warm
                stats = ppo_update(actor, critic, batch, cfg, world, device, train_actor, shuffle)
                version += int(train_actor)
            step += 1
            record = step_record(step, batch, samples, texts, scores, stats, times, actor, critic,
                                 train_actor, cfg, device, groups, warned)
            phase_ms.append(times)
            if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < total_steps:
                acc = held_out_eval(engine, actor.model, version, tokenizer, test_rows, cfg, rank, world,
                                    device, step, f"step {step}")
                if acc is not None:
                    record["eval/accuracy"] = acc
            if rank == 0:
                write_step(out, step, record, samples, texts, golds, scores, tokenizer, cfg)
            show_progress(bar, record)
            if cfg.save_every > 0 and step % cfg.save_every == 0 and step < total_steps:
                last_ckpt = runtime.save_checkpoint(
                    out, step, [x for x in (actor, critic) if x is not None], tokenizer,
                    {"position": position, "config": dataclasses.asdict(cfg),
                     "shuffle_per_rank": runtime.all_gather_object(shuffle.get_state())},
                    cfg.keep_checkpoints, cfg.keep_actor_weights, {"critic"}, cfg.async_save)
                if rank == 0:
                    plot_curves(out)
            if runtime.time_is_up(cfg.time_limit_minutes, t_start, step):
                break
    except FloatingPointError as e:
        stop_on_non_finite(e, cfg, step, last_ckpt, bar, engine)
    bar.close()
    runtime.finish_saving()  # the last checkpoint's files, written behind the RL loop
    rl_minutes = (time.perf_counter() - t_start) / 60
    runtime.save_hf_checkpoint(actor.model, tokenizer, str(out / "final" / "actor"))
    if critic is not None:
        save_critic(critic.model, tokenizer, str(out / "final" / "critic"))
    runtime.print0(f"saved {out / 'final' / 'actor'}")
    acc1 = held_out_eval(engine, actor.model, version, tokenizer, test_rows, cfg, rank, world, device, step,
                         "end")
    runtime.write_measured_memory(out, actor, critic, ref, engine, grad_bytes, rank)
    engine.close()  # before our process group goes: vLLM's shutdown tears down its groups on it
    final_report(out, step, acc0, acc1, phase_ms, rl_minutes, rank, world)
    dist.barrier()  # every rank done with the group before any tears it down
    dist.destroy_process_group()


# ==== bookkeeping below: ppo.py's own data, set-up and resume, step records, checks, command line ====


# ---- data: prompts and golds, the endless seeded prompt stream ----
PROMPT_FIELDS = ("input", "prompt")  # already formatted


QUESTION_FIELDS = ("question", "problem")  # formatted by reward.apply_template (MATH 500's rows: `problem`)


GOLD_FIELDS = ("answer", "gt_answer", "ground_truth_answer")


def read_prompts(path: str, template: str, levels: str = "") -> list[dict]:
    """Rows {prompt, gold} from a JSON list or a JSONL file. Errors name the file, line/index and field."""
    rows = []
    # an empty prompt is dropped; an empty gold is kept (v0 trained on its two, records 5054 and 5158)
    for where, row in runtime.drop_empty(path, runtime.read_json_rows(path, levels),
                                         [PROMPT_FIELDS + QUESTION_FIELDS]):
        prompt_key = next((k for k in PROMPT_FIELDS if k in row), None)
        if prompt_key is not None:
            prompt = row[prompt_key]
        elif any(k in row for k in QUESTION_FIELDS):
            prompt_key = next(k for k in QUESTION_FIELDS if k in row)
            prompt = row[prompt_key]
        else:
            raise ValueError(f"{path} {where}: none of the fields 'input', 'prompt', 'question', 'problem'")
        if not isinstance(prompt, str):
            raise ValueError(f"{path} {where}: field '{prompt_key}' must be a string, "
                             f"got {type(prompt).__name__}")
        if prompt_key in QUESTION_FIELDS:
            prompt = reward.apply_template(prompt, template)
        gold_key = next((k for k in GOLD_FIELDS if k in row), None)
        if gold_key is None:
            raise ValueError(f"{path} {where}: none of the fields {', '.join(map(repr, GOLD_FIELDS))}")
        if not isinstance(row[gold_key], (str, int, float)) or isinstance(row[gold_key], bool):
            raise ValueError(f"{path} {where}: field '{gold_key}' must be a string or a number")
        rows.append({"prompt": prompt, "gold": str(row[gold_key])})
    return rows


def prompts_per_rank(cfg: Config, world: int) -> int:
    """Each rank's share of a rollout batch's prompts; the batch must split into ranks and whole
    mini-batches."""
    per_rank_prompts, rem = divmod(cfg.rollout_batch_size, world)
    rollout_per_rank = per_rank_prompts * cfg.n_samples_per_prompt
    if rem or (cfg.train_batch_size % world) or rollout_per_rank % (cfg.train_batch_size // world):
        raise SystemExit(f"--rollout-batch-size {cfg.rollout_batch_size} x --n-samples-per-prompt "
                         f"{cfg.n_samples_per_prompt} must split into {world} ranks and whole mini-batches "
                         f"of --train-batch-size {cfg.train_batch_size}")
    return per_rank_prompts


def load_data(cfg: Config, tokenizer) -> tuple[list[dict], list[dict]]:
    """The training prompts (tokenized; --long-prompts applied) and the held-out sample (--eval-size)."""
    runtime.check_prompt_room(tokenizer, reward.apply_template("", cfg.template), cfg.prompt_max_len,
                              "prompt_max_len")
    with runtime.data_errors_are_clear():
        rows, n_long = runtime.tokenize_prompts(read_prompts(cfg.train_file, cfg.template, cfg.levels),
                                                tokenizer, cfg.prompt_max_len, cfg.long_prompts)
        test_rows = read_prompts(cfg.test_file, cfg.template, cfg.levels) if cfg.test_file else []
    if test_rows:
        test_rows, _ = runtime.tokenize_prompts(test_rows, tokenizer, cfg.prompt_max_len, cfg.long_prompts)
        if cfg.eval_size > 0:
            test_rows = random.Random(cfg.seed).sample(test_rows, min(cfg.eval_size, len(test_rows)))
    if len(rows) < cfg.rollout_batch_size:
        raise SystemExit(f"{cfg.train_file}: {len(rows)} prompts (levels {cfg.levels or 'all'}, at most "
                         f"{cfg.prompt_max_len} tokens), fewer than one rollout batch of "
                         f"--rollout-batch-size {cfg.rollout_batch_size}")
    runtime.print0(f"{len(rows)} prompts ({n_long} longer than {cfg.prompt_max_len} tokens: "
                   f"{cfg.long_prompts})")
    return rows, test_rows


def count_steps(cfg: Config, n_rows: int, n_test: int, world: int) -> tuple[int, int]:
    """(RL steps, optimizer steps per network) of the whole run: the length of the cosine schedules."""
    steps_per_episode = n_rows // cfg.rollout_batch_size
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_episodes * steps_per_episode
    rollout_per_rank = cfg.rollout_batch_size // world * cfg.n_samples_per_prompt
    updates_per_step = cfg.ppo_epochs * rollout_per_rank // (cfg.train_batch_size // world)
    runtime.print0(f"{total_steps} RL steps x {cfg.rollout_batch_size} prompts x {cfg.n_samples_per_prompt} "
                   "samples, "
                   f"{updates_per_step} optimizer steps each; {n_test} held-out problems; world {world}")
    return total_steps, total_steps * updates_per_step


def start_or_resume(out: Path, cfg: Config, resume_from: Path | None, actor: Learner, critic: Learner | None,
                    shuffle: torch.Generator, rank: int) -> tuple[int, int, list[dict]]:
    """(RL step, prompt position, the metrics records kept). Resume: the checkpoint's weights, optimizer and
    RNG states, and metrics.jsonl cut back to its step; a fresh start: the previous run's files removed."""
    step, position = 0, 0
    if resume_from is not None:
        state = runtime.load_checkpoint(resume_from, [x for x in (actor, critic) if x is not None], rank)
        step, position = state["step"], state["position"]
        shuffle.set_state(state["shuffle_per_rank"][rank % len(state["shuffle_per_rank"])])
        runtime.print0(f"resumed from {resume_from} at RL step {step} (prompt position {position})")
    kept = runtime.begin_run(out, cfg, step if resume_from is not None else None, rank)
    if rank == 0:
        (out / "rollouts").mkdir(exist_ok=True)
    return step, position, kept


def step_record(step: int, batch: dict, samples: list[runtime.Sample], texts: list[str], scores: list[float],
                stats: dict, times: dict, actor: Learner, critic: Learner | None, train_actor: bool,
                cfg: Config, device, groups: dict, warned: set) -> dict:
    """One metrics.jsonl record: rollout statistics, the update's, learning rates, timings, memory; with a
    warning when the numbers say the sampled policy is not the one being trained, and health_warnings."""
    record = {"step": step, **rollout_stats(batch, samples, texts, scores, cfg, device, groups), **stats,
              "actor_lr": actor.lr if train_actor else 0.0}
    skip = "zero_variance_groups" if cfg.dynamic_sampling else None  # those groups are dropped and refilled
    runtime.warn_once(record, [h for h in HEALTH if h[0] != skip], warned)
    if critic is not None:
        record["critic_lr"] = critic.lr
    if record["kl"] < -3 * record["kl_stderr"] - 1e-6:
        runtime.print0(f"WARNING step {step}: mean k1 = {record['kl']:.4g} < 0 "
                       f"(stderr {record['kl_stderr']:.2g}). "
                       "In expectation KL(pi||pi_ref) >= 0: the scored policy is not the sampled one "
                       "(sampler/scorer masking, temperature or weight sync mismatch). "
                       "The KL penalty is now a bonus.")
    if record.get("engine_logprob_gap", 0) > (1e-3 if device.type == "cpu" else 0.1):  # fp32 vs bf16 noise
        runtime.print0(f"WARNING step {step}: engine vs trainer log-prob gap "
                       f"{record['engine_logprob_gap']:.3g} nats/token: the rollout engine does not "
                       "sample the policy being trained (weight sync?)")
    step_time = sum(times.values())
    gen_tokens = runtime.global_sums({"t": batch["response_mask"].sum().item()}, device)["t"]
    record.update({f"time/{k}_ms": 1000 * v for k, v in times.items()}, **{
        "time/step_ms": 1000 * step_time, "tokens_per_s": gen_tokens / step_time,
        "generate_tokens_per_s": gen_tokens / max(times["generate"], 1e-9),
        "mem/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        **runtime.LEDGER.record(device))  # perf/*: passes, padding, rank imbalance, collectives, host syncs
    if device.type == "cuda":
        record["mem/peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return record


def write_step(out: Path, step: int, record: dict, samples: list[runtime.Sample], texts: list[str],
               golds: list[str], scores: list[float], tokenizer, cfg: Config) -> None:
    """Rank 0: the record to metrics.jsonl; every --dump-rollouts-every steps (and the first) the samples."""
    runtime.log_metrics(out, record)
    if cfg.dump_rollouts_every > 0 and (step % cfg.dump_rollouts_every == 0 or step == 1):
        runtime.write_jsonl(out / "rollouts" / f"step_{step}.jsonl", (
            {"prompt": tokenizer.decode(s.prompt_ids), "response": text, "gold": gold, "score": score,
             "truncated": s.truncated} for s, text, gold, score in zip(samples, texts, golds, scores)))


def show_progress(bar, record: dict) -> None:
    bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.3f}",
                    kl=f"{record['kl']:.4f}", len=f"{record['response_length']:.1f}", refresh=False)
    bar.update(1)  # after the postfix: a refresh (see progress_settings) shows this step's numbers


def stop_on_non_finite(e: FloatingPointError, cfg: Config, step: int, last_ckpt: Path | None, bar, engine):
    """A NaN/inf loss or gradient norm (ppo_update raises before any optimizer step): where to go on from."""
    runtime.stop_on_non_finite(e, f"RL step {step + 1}", last_ckpt, f"learning rates {cfg.actor_lr:g}/"
                               f"{cfg.critic_lr:g}, temperature {cfg.temperature:g}, max_grad_norm "
                               f"{cfg.max_grad_norm:g}", bar.close, engine.close)


def final_report(out: Path, step: int, acc0, acc1, phase_ms: list[dict], rl_minutes: float, rank: int,
                 world: int) -> None:
    """The end accuracy into metrics.jsonl and curves.png; ms per step by phase; the accuracy change."""
    if rank == 0:
        if acc1 is not None:
            runtime.log_metrics(out, {"step": step, "eval/accuracy": acc1})
        plot_curves(out)
    runtime.report_phases(phase_ms, rl_minutes, "RL steps")
    if acc0 is not None and acc1 is not None:
        runtime.print0(f"held-out greedy accuracy: {100 * acc0:.1f}% -> {100 * acc1:.1f}% "
                       f"({100 * (acc1 - acc0):+.1f} points)")


# ---- observability ----
REFLECTION = re.compile(r"\b(wait|recheck|re-check|double[- ]check|let me (?:verify|check)|"
                        r"let's (?:verify|check)|verify)\b", re.IGNORECASE)


def rollout_stats(batch: dict, samples: list[runtime.Sample], texts: list[str], scores: list[float],
                  cfg: Config, device, groups: dict | None = None) -> dict:
    """Per-step metrics over every rank's samples (sums all-reduced, then divided). The sampler-trainer gap
    |log pi_sampler - log pi_old| per token: its mean; the largest over ranks of each rank's p95 and max."""
    m = batch["response_mask"]
    lengths = m.sum(1)
    k1 = (batch["old_logp"] - batch["ref_logp"]) * m
    ret, val = batch["returns"], batch["values"]
    gap = [(a - b) for s, row in zip(samples, batch["old_logp"]) if s.engine_logprobs is not None
           and cfg.old_logprobs == "trainer" for a, b in zip(s.engine_logprobs, row.tolist())]
    s = runtime.global_sums({
        "n": len(samples), "reward": sum(scores), "accuracy": sum(x == 1.0 for x in scores),
        "format": sum(x > -1.0 for x in scores), "length": lengths.sum().item(),
        "truncated": sum(x.truncated for x in samples),
        "reflection": sum(bool(REFLECTION.search(t)) for t in texts),
        "tokens": m.sum().item(), "k1": k1.sum().item(), "k1_sq": (k1 ** 2).sum().item(),
        "k1_seq": k1.sum().item(), "ret": (ret * m).sum().item(), "ret_sq": (ret ** 2 * m).sum().item(),
        "err": ((ret - val) * m).sum().item(), "err_sq": ((ret - val) ** 2 * m).sum().item(),
        "values": (val * m).sum().item(), "gap": sum(abs(g) for g in gap), "gap_n": len(gap),
        "timeouts": sum(reward.last_batch_report.get(k, 0) for k in ("timed_out", "past_deadline")),
        **{f"groups_{k}": v for k, v in (groups or {}).items()},
    }, device)
    n, tok = s["n"], max(s["tokens"], 1)
    var_ret = s["ret_sq"] / tok - (s["ret"] / tok) ** 2
    var_err = s["err_sq"] / tok - (s["err"] / tok) ** 2
    max_len = torch.tensor(lengths.max().item(), device=device)
    dist.all_reduce(max_len, op=dist.ReduceOp.MAX)
    out = {"reward": s["reward"] / n, "accuracy": s["accuracy"] / n, "format_rate": s["format"] / n,
           "response_length": s["length"] / n, "response_length_max": max_len.item(),
           "truncated_rate": s["truncated"] / n, "reflection_rate": s["reflection"] / n,
           "kl": s["k1"] / tok, "kl_per_seq": s["k1_seq"] / n, "values": s["values"] / tok,
           "grading_timeouts": s["timeouts"],  # comparisons ungraded after a retry, scored as wrong
           "explained_variance": 1 - var_err / var_ret if var_ret > 0 else float("nan"),
           "kl_stderr": math.sqrt(max(s["k1_sq"] / tok - (s["k1"] / tok) ** 2, 0) / tok)}
    if s["gap_n"]:
        out["engine_logprob_gap"] = s["gap"] / s["gap_n"]  # mean |engine - trainer| log-prob, sampled tokens
        tail = runtime.largest_tail([abs(x) for x in gap])  # p95 and max: the largest over ranks
        out["engine_logprob_gap_p95"], out["engine_logprob_gap_max"] = tail
    if s.get("groups_groups"):  # the share of drawn groups whose scores were all equal; draws per step
        out["zero_variance_groups"] = s["groups_zero_variance"] / s["groups_groups"]
        out["dynamic_sampling_draws"] = s["groups_draws"] / runtime.global_sums({"ranks": 1}, device)["ranks"]
    if cfg.advantage != "gae":  # no critic: no values to explain the returns
        for k in ("values", "explained_variance"):
            out.pop(k)
    return out


# The health signals' thresholds (docs/objectives.md): crossing one prints one HEALTH line, once per run,
# naming the flag that addresses it (advice; WARNING lines are kept for a sampler that is not the policy).
HEALTH = [("entropy", "<", 0.05, "entropy collapse (nats/token)", "--clip-eps-high 0.28 or --entropy-coef"),
          ("truncated_rate", ">", 0.2, "runaway length: share of responses truncated",
           "--overlong filter|shape, or a larger --generate-max-len"),
          ("zero_variance_groups", ">", 0.5, "share of groups whose scores are all equal (no signal)",
           "--dynamic-sampling"),
          ("engine_logprob_gap_p95", ">", 0.05, "sampler-trainer log-prob gap p95 (nats/token)",
           "--tis-cap 2 (or --old-logprobs sampler)")]


def plot_curves(out: Path) -> None:
    # Two rows, like the SimpleRL-Zero blog's figures: what is rewarded (top), then how the responses change:
    # the mean sampled response length and the share of responses with a reflection word (REFLECTION).
    runtime.plot_metrics(out, [["reward", "accuracy", "eval/accuracy", "format_rate"],
                       ["response_length", "reflection_rate", "kl"],
                       ["entropy", "clipfrac_low", "clipfrac_high", "truncated_rate", "zero_variance_groups",
                        "engine_logprob_gap", "engine_logprob_gap_p95"]], "RL step",
                 titles={"response_length": "mean response length (tokens)",
                         "reflection_rate": "share with a reflection word", "accuracy": "accuracy (sampled)",
                         "eval/accuracy": "eval/accuracy (greedy, held out)"})


# ---- command line ----
# Fields --resume lets differ from the saved config.json: how long to run and how often to evaluate, save
# and log, where the held-out problems come from, and memory/speed knobs with the same numbers. Every
# other change (model, data, batch sizes, learning rates, ...) would make the resumed run a different one.
SAFE_ON_RESUME = {"max_steps", "num_episodes", "time_limit_minutes", "eval_every", "eval_size",
                  "eval_batch_size", "test_file", "save_every", "keep_checkpoints", "dump_rollouts_every",
                  "resume", "overwrite", "output_dir", "micro_train_batch_size", "micro_rollout_batch_size",
                  "gradient_checkpointing", "reward_workers", "vllm_gpu_memory_utilization",
                  "train_forward_tokens", "rollout_forward_tokens", "async_save"}


def validate(cfg: Config) -> None:
    """Every value checked once, before anything is loaded or written: a clear error, never zeros."""
    need = runtime.flag_check(cfg)
    runtime.check_common(cfg)
    choices = {"template": tuple(reward.TEMPLATES), "kl_estimator": ("k1", "k2", "k3"), "loss_agg": LOSS_AGGS,
               "vllm_sleep_level": (1, 2), "engine": ("auto", "hf", "vllm"), "grader": reward.GRADERS,
               "advantage": ADVANTAGES, "value_head_init": ("normal", "zeros"),
               "long_prompts": ("truncate", "drop"), "old_logprobs": ("trainer", "sampler"),
               "overlong": ("none", "filter", "shape"), "gradient_checkpointing": ("auto", "on", "off")}
    for name, allowed in choices.items():
        need(getattr(cfg, name) in allowed, name, "must be one of " + ", ".join(map(str, allowed)))
    for name in ("rollout_batch_size", "n_samples_per_prompt", "train_batch_size", "micro_train_batch_size",
                 "eval_batch_size", "prompt_max_len", "generate_max_len", "ppo_epochs"):
        need(getattr(cfg, name) > 0, name, "must be a positive integer")
    need(cfg.micro_rollout_batch_size >= 0, "micro_rollout_batch_size", "must be >= 0 (0: no cap)")
    need(cfg.temperature > 0, "temperature", "must be > 0 (log-probs are taken at logits / temperature; "
         "sampling at temperature 0 is greedy decoding, which PPO cannot learn from)")
    need(0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    need(cfg.reward_timeout > 0, "reward_timeout",
         "must be > 0 seconds (each answer comparison's time limit)")
    need(cfg.reward_workers >= -1, "reward_workers",
         "must be -1 (default), 0 (in-process) or a number of processes")
    for name in ("actor_lr", "critic_lr", "weight_decay", "kl_coef", "entropy_coef", "max_grad_norm",
                 "eval_size", "save_every", "keep_checkpoints", "dump_rollouts_every", "critic_warmup_steps",
                 "time_limit_minutes", "eval_every"):
        need(getattr(cfg, name) >= 0, name, "must be >= 0")
    for name in ("clip_eps", "value_clip"):
        need(getattr(cfg, name) > 0, name, "must be > 0")
    for name in ("gamma", "lam", "adam_beta1", "adam_beta2", "warmup_ratio", "min_lr_ratio"):
        need(0 <= getattr(cfg, name) <= 1, name, "must be in [0, 1]")
    need(cfg.max_steps > 0 or cfg.num_episodes > 0, "num_episodes", "must be > 0 when --max-steps is not set")
    need(cfg.logprob_temperature > 0, "logprob_temperature", "must be > 0")
    groups = cfg.advantage not in ("gae", "reinforce++") or cfg.dynamic_sampling
    need(cfg.n_samples_per_prompt >= 2 or not groups, "n_samples_per_prompt",
         f"must be >= 2 with --advantage {cfg.advantage} or --dynamic-sampling (groups)")
    need(cfg.clip_eps_high >= 0 and cfg.tis_cap >= 0, "clip_eps_high", "and --tis-cap must be >= 0 (0: off)")
    need(cfg.overlong != "shape" or 0 < cfg.overlong_buffer <= cfg.generate_max_len, "overlong_buffer",
         "must be in (0, --generate-max-len] with --overlong shape")
    need(cfg.min_new_tokens >= 0, "min_new_tokens", "must be >= 0")
    need(cfg.rollout_forward_tokens > 0, "rollout_forward_tokens", "must be a positive number of tokens")
    need(cfg.train_forward_tokens >= 0, "train_forward_tokens", "must be >= 0 (0: micro-batches of rows)")
    runtime.check_run_inputs(cfg)
    if cfg.critic_model:
        runtime.model_source(cfg.critic_model)


def parse_args(argv=None) -> Config:
    """Command line = Config: a flag per field, its comment the --help text; --preset, then explicit flags."""
    return runtime.parse_config(Config, PRESETS, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    config = parse_args()
    with runtime.stage_errors(config.output_dir):
        main(config)
    runtime.end_process()  # see end_process: skips a teardown that can abort a finished multi-rank run
