"""A 2-rank FSDP2 update (gloo, CPU) matches a 1-process update (unsharded) on the same rollout.

Run as a script (`python tests/test_ppo_dist.py OUT` or under torchrun) it is the worker: it builds a fixed
rollout of 8 responses, takes this rank's share, computes old log-probs, KL-shaped rewards, GAE and
advantages whitened across ranks, runs ppo_update (2 epochs, micro-batches of 2, one optimizer step per
epoch) and writes the resulting full weights. Optimizers are plain SGD so a wrong gradient scale (e.g.
forgetting FSDP's average over ranks) changes the result; Adam's first step would hide it.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: ppo.py updates under torchrun

TINY = str(ROOT / "data" / "tiny")


def worker(out: str) -> None:
    rank, world, device = runtime.init_distributed()
    actor = runtime.load_model(TINY, seed=0)
    critic = ppo.Critic(runtime.load_model(TINY, seed=1))
    torch.nn.init.normal_(critic.value_head.weight, std=0.5, generator=torch.Generator().manual_seed(2))
    actor, critic = runtime.shard_model(actor, device), runtime.shard_model(critic, device)
    # the optimizers take the parameters before any forward, as ppo.py's main does: after a no-grad forward FSDP2
    # leaves the root unsharded, and .parameters() would then hand the optimizer the root's (embeddings, final
    # norm, value head) temporary unsharded copies, which a step would update while the model used its shards
    # critic lr 0.05: at 0.5 its weights blew up to |w| ~ 34 (grad norm ~5,000), where fp32 summation order
    # alone moves them by ~1e-4 and the comparison measures rounding, not the gradient's scale
    opts = [torch.optim.SGD(actor.parameters(), lr=0.5), torch.optim.SGD(critic.parameters(), lr=0.05)]
    g = torch.Generator().manual_seed(123)
    samples = []
    for i in range(8):  # the same rollout on every rank; ragged prompts and responses
        p = torch.randint(0, 256, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(0, 256, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
        samples.append(runtime.Sample(p, r, False, None))
    scores = torch.tensor([[-1.0, -0.5, 1.0][int(x)] for x in torch.randint(0, 3, (8,), generator=g)])
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    samples, scores = samples[share], scores[share]
    cfg = ppo.Config(temperature=0.8, train_batch_size=8, micro_train_batch_size=2, micro_rollout_batch_size=3,
                     ppo_epochs=2, max_grad_norm=1e9, entropy_coef=0.01, kl_coef=0.05, loss_agg=os.environ.get("LOSS_AGG", "seq-mean-token-mean"),
                     train_forward_tokens=int(os.environ.get("TRAIN_FORWARD_TOKENS", "0")),
                     advantage=os.environ.get("ADVANTAGE", "gae"))
    if cfg.advantage != "gae":  # no critic: the actor's update alone
        critic = None
    batch = ppo.pad_samples(samples, 256)
    ref = actor  # the reference's role here is only to give k1 = 0; the KL path is covered elsewhere
    ppo.experience_forward(actor, ref, critic, batch, cfg, device)
    m = batch["response_mask"]
    # a non-zero KL term, so the shaped reward is exercised: pretend the reference was slightly different
    kl = ppo.kl_penalty(batch["old_logp"], batch["old_logp"] - 0.1 * m, "k1") * m
    batch["rewards"] = ppo.shape_rewards(scores, kl, m, cfg.kl_coef)
    adv, batch["returns"] = ppo.compute_gae(batch["rewards"], batch["values"], m, cfg.gamma, cfg.lam)
    batch["advantages"] = ppo.masked_whiten(adv, m, distributed=True)
    # issue 10 item 2: never switch off gradient sync between micro-batches (FSDP2 would then keep full-size
    # gradients of the whole model on every rank); record every call
    sync_calls = []
    for model in (actor, critic or actor):
        # a world of one on CPU is left unsharded by shard_model (a plain module: nothing to switch off)
        assert hasattr(model, "set_requires_gradient_sync") == (world > 1), "2 ranks must run FSDP2-sharded"
        if world == 1:
            continue
        original = model.set_requires_gradient_sync
        model.set_requires_gradient_sync = lambda flag, *a, original=original, **k: (sync_calls.append(flag),
                                                                                    original(flag, *a, **k))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in opts]
    learners = [ppo.Learner(n, m, o, s, cfg.max_grad_norm) if m is not None else None for n, m, o, s in
                zip(("actor", "critic"), (actor, critic), opts, scheds)]
    runtime.LEDGER.reset()
    stats = ppo.ppo_update(*learners, batch, cfg, world, device, train_actor=True,
                           generator=torch.Generator().manual_seed(rank))
    loads = runtime.all_gather_object(runtime.LEDGER.loads)  # each rank's tokens per update pass
    assert False not in sync_calls, "ppo_update accumulated unsharded gradients (set_requires_gradient_sync(False))"
    # full weights: gathered from the DTensor shards (2 ranks, a collective) or the plain tensors (one process)
    weights = {("actor." + n): t.clone() for n, t in ppo.stream_weights(actor)}
    weights.update({("critic." + n): t.clone() for n, t in ppo.stream_weights(critic)} if critic else {})
    advs = runtime.all_gather_object(batch["advantages"][m > 0].tolist())
    if rank == 0:
        torch.save({"weights": weights, "stats": stats, "advantages": sum(advs, []), "loads": loads}, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("loss_agg,tokens,advantage", [("seq-mean-token-mean", 0, "gae"),
                                                      ("seq-mean-token-mean", 24, "gae"),
                                                      ("token-mean", 24, "gae"), ("token-mean", 24, "grpo")])
def test_two_rank_fsdp_update_matches_one_process(tmp_path, loss_agg, tokens, advantage):
    """tokens > 0: the 2-rank run packs its rows into passes of <= 24 tokens, balanced across the ranks
    (--train-forward-tokens), against the one process's padded micro-batches of 2 rows."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", LOSS_AGG=loss_agg, ADVANTAGE=advantage)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    r = subprocess.run([sys.executable, __file__, str(one)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env["TRAIN_FORWARD_TOKENS"] = str(tokens)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                        str(runtime._free_port()), __file__, str(two)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    if tokens:  # every rank ran the same number of passes (2 epochs x >= 2), none over the budget
        assert len(b["loads"]) == 2 and len(b["loads"][0]) == len(b["loads"][1]) >= 4
        assert max(max(x) for x in b["loads"]) <= tokens
    start = {("actor." + n): p for n, p in runtime.load_model(TINY, seed=0).named_parameters()}
    moved = max((a["weights"][k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-3, "the update did not move the actor: the comparison would be vacuous"
    for run in (a, b):  # the root's parameters (embeddings, final norm) too, in both runs
        root = ("actor.model.embed_tokens.weight", "actor.model.norm.weight")
        assert min((run["weights"][k] - start[k]).abs().max().item() for k in root) > 1e-4, "root not updated"
    start.update({("critic." + n): p for n, p in ppo.Critic(runtime.load_model(TINY, seed=1)).named_parameters()
                  if n != "value_head.weight" and advantage == "gae"})
    for k in a["weights"]:
        # fp32 summation order differs (2 ranks reduce-scatter every micro-batch's gradients): allow 1e-5 of how
        # far the tensor moved (the critic's layers move by up to ~30 here: lr 0.5, gradient norm ~4,000)
        moved_k = (a["weights"][k] - start[k]).abs().max().item() if k in start else 0.0
        torch.testing.assert_close(b["weights"][k], a["weights"][k], atol=2e-5 + 1e-5 * moved_k, rtol=1e-4, msg=k)
    torch.testing.assert_close(torch.tensor(sorted(b["advantages"])), torch.tensor(sorted(a["advantages"])),
                               atol=1e-5, rtol=1e-5)
    for k in ("pg_loss", "entropy", "clipfrac", "approx_kl") + (("v_loss",) if advantage == "gae" else ()):
        assert abs(a["stats"][k] - b["stats"][k]) < 1e-4 * max(1.0, abs(a["stats"][k])), k
    assert a["stats"]["approx_kl"] > 0  # the second epoch ran on updated weights


def test_cost_ledger_packed_against_padded_in_the_two_rank_tiny_world(tmp_path):
    """Issue 22's figures, read from metrics.jsonl: the tiny preset on 2 ranks with the recipe's batch structure
    (2-row micro-batches) against its packed passes: no padding to speak of in the update and the experience
    forwards, ranks balanced, passes and FSDP traffic cut at least 4x."""
    perf = {}
    for name, extra in (("padded", ["--train-forward-tokens", "0"]), ("packed", ["--train-forward-tokens", "1024"])):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                            str(runtime._free_port()), "ppo.py", "--preset", "tiny", "--output-dir",
                            str(tmp_path / name), "--test-file", "", "--max-steps", "1", "--save-every", "0",
                            "--micro-train-batch-size", "2", *extra], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        perf[name] = runtime.read_metrics(tmp_path / name / "metrics.jsonl")[-1]
    packed, padded = perf["packed"], perf["padded"]
    assert packed["perf/update_pad_fraction"] <= 0.02 and packed["perf/experience_pad_fraction"] <= 0.02
    assert packed["perf/update_rank_imbalance"] <= 1.05
    assert padded["perf/update_passes"] >= 4 * packed["perf/update_passes"] > 0
    assert padded["perf/collective_bytes"] >= 4 * packed["perf/collective_bytes"] > 0
    # 4 mini-batches: the row gather, the finite check and each network's gradient norm, then the sums at the end
    assert packed["perf/host_syncs"] <= 4 * 4 + 3 and padded["perf/host_syncs"] <= 3 * 4 + 3


if __name__ == "__main__":
    worker(sys.argv[1])
    runtime.end_process()  # what ppo.py's own runs do: no interpreter teardown for gloo's threads to race with
