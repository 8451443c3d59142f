"""Rollout engines: the sampler and the trainer score the same distribution; weight sync streams every
parameter; the vLLM engine's call sequence (on a stand-in with vLLM's method names, so it runs on CPU)."""
import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

TINY = str(ROOT / "data" / "tiny")


def setup_models(temperature=0.7):
    rank, world, device = runtime.init_distributed()
    tok = AutoTokenizer.from_pretrained(TINY)
    base = runtime.load_model(TINY, seed=0)
    actor = runtime.shard_model(copy.deepcopy(base), device)
    ref = runtime.shard_model(copy.deepcopy(base), device)
    critic = runtime.shard_model(ppo.Critic(runtime.load_model(TINY, seed=0), init="zeros"), device)
    return tok, base, actor, ref, critic, device


@pytest.mark.parametrize("logprob_temperature", [1.0, 0.7])  # v0's T = 1 scoring, and the tempered variant
def test_sampler_logprobs_equal_trainer_logprobs_and_k1_is_zero_at_step_0(logprob_temperature):
    """Sampling at 0.7, the engine reports log-probs the way the trainer scores them (logits / T_lp), so the
    engine-vs-trainer gap compares like with like under either --logprob-temperature."""
    tok, base, actor, ref, critic, device = setup_models()
    # built as ppo.make_engine builds it: from the trainer's config, whose use_cache load_model turned off
    sampler = AutoModelForCausalLM.from_config(actor.config)
    engine = runtime.HFEngine(sampler, tok, stop_ids=[258], stop_strings=[], device=device,
                              logprob_temperature=logprob_temperature)
    ppo.sync_weights(actor, engine, 0)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in ["Q: 1+2\nA:", "Q: 347-85+12\nA:", "Q: 9\nA:"]]
    torch.manual_seed(0)
    samples = engine.generate(prompts, n=4, temperature=0.7, top_p=1.0, max_new_tokens=16)
    assert len(samples) == 12 and all(s.engine_logprobs is not None for s in samples)
    batch = ppo.pad_samples(samples, tok.pad_token_id)
    cfg = ppo.Config(temperature=0.7, logprob_temperature=logprob_temperature,
                     micro_rollout_batch_size=5)  # uneven micro-batches, each trimmed
    ppo.experience_forward(actor, ref, critic, batch, cfg, device)
    for s, row in zip(samples, batch["old_logp"]):
        torch.testing.assert_close(torch.tensor(s.engine_logprobs), row[: len(s.response_ids)], atol=1e-5, rtol=1e-5)
    k1 = ppo.kl_penalty(batch["old_logp"], batch["ref_logp"], "k1") * batch["response_mask"]
    assert (k1 == 0).all(), "actor == reference at step 0, so every per-token k1 must be exactly 0"
    assert (batch["values"] == 0).all()  # zero-initialised value head


def test_sampler_ignores_model_generation_defaults():
    """A model's generation_config (top_k, repetition penalty...) must not truncate sampling: the trainer
    scores the plain softmax(logits / T), so the sampler must draw from exactly that."""
    tok, base, actor, _, _, device = setup_models()
    base.generation_config.top_k = 3
    base.generation_config.repetition_penalty = 1.5
    engine = runtime.HFEngine(base, tok, stop_ids=[258], stop_strings=[], device=device)
    ppo.sync_weights(actor, engine, 0)
    torch.manual_seed(1)
    prompt = tok("Q: 1+2\nA:", add_special_tokens=False)["input_ids"]
    out = engine.model.generate(input_ids=torch.tensor([prompt]), do_sample=True, max_new_tokens=1, top_k=3,
                                return_dict_in_generate=True, output_logits=True, pad_token_id=256)
    samples = engine.generate([prompt], n=64, temperature=1.0, top_p=1.0, max_new_tokens=8)
    logits = out.logits[0][0]  # the first step's logits are the same for every sample of this prompt
    ranks = [(logits > logits[s.response_ids[0]]).sum().item() for s in samples]
    assert max(ranks) >= 3, "sampled tokens never left the top-3: a top-k filter is active in the sampler"


@pytest.mark.parametrize("temperature", [1.0, 0.0])  # sampled rollouts and greedy
def test_shared_prompt_cache_samples_the_same_tokens(temperature):
    """The n samples of a prompt share its prompt's keys and values (prompt_cache). With the same seed they
    draw the same tokens, with the same log-probs, as when each sample runs its whole prompt, also for
    left-padded prompts of different lengths and in batches that split the prompts."""
    tok, base, actor, _, _, device = setup_models()
    engine = runtime.HFEngine(base, tok, stop_ids=[258], stop_strings=[], device=device)
    ppo.sync_weights(actor, engine, 0)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in ["Q: 1+2\nA:", "Q: 347-85+12\nA:", "Q:"]]
    runs, caches, real = {}, [], engine.prompt_cache
    for shared in (True, False):
        # counted, then off: every sample runs its own prompt, as HF generate alone does
        engine.prompt_cache = (lambda *args: caches.append(real(*args)) or caches[-1]) if shared else \
            (lambda *args: None)
        for batch_size in (0, 8):
            torch.manual_seed(3)
            runs[shared, batch_size] = engine.generate(prompts, n=4, temperature=temperature, top_p=1.0,
                                                       max_new_tokens=12, batch_size=batch_size)
    for batch_size in (0, 8):
        with_cache, without = runs[True, batch_size], runs[False, batch_size]
        assert [s.prompt_ids for s in with_cache] == [p for p in prompts for _ in range(4)]
        assert [s.response_ids for s in with_cache] == [s.response_ids for s in without]
        if temperature:
            for a, b in zip(with_cache, without):
                torch.testing.assert_close(torch.tensor(a.engine_logprobs), torch.tensor(b.engine_logprobs),
                                           atol=1e-5, rtol=1e-5)
    assert len(caches) == 3 and all(c is not None for c in caches)  # one call, then two of 8 rows: shared
    if temperature:
        assert len({tuple(s.response_ids) for s in runs[True, 0]}) > 3  # the samples of a prompt differ


def test_sync_streams_every_parameter_into_hf_engine():
    tok, base, actor, ref, critic, device = setup_models()
    engine = runtime.HFEngine(base, tok, stop_ids=[258], stop_strings=[], device=device)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ppo.sync_weights(actor, engine, 0)
    target = dict(engine.model.named_parameters())
    for name, t in ppo.stream_weights(actor):
        torch.testing.assert_close(target[name], t)


class FakeVLLM:
    """Records what the trainer asks of vLLM's LLM: sleep/wake_up/apply_model/reset_prefix_cache/generate.
    Sleeps like vLLM on GPU: level 1 keeps the weights (in host memory), level 2 DISCARDS them, so a wake-up
    after it brings back garbage; generating from discarded weights is recorded as an error."""

    def __init__(self):
        self.calls = []
        self.loaded = []
        self.has_weights = False
        self.errors = []

    def sleep(self, level):
        self.calls.append(("sleep", level))
        if level >= 2:
            self.has_weights = False

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def apply_model(self, func):
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(
            (name, t.shape, t.dtype, t.clone()) for name, t in weights))
        self.calls.append(("apply_model",))
        self.has_weights = True
        return [func(model)]

    def generate(self, prompts, params, use_tqdm):
        self.calls.append(("generate", len(prompts)))
        if not self.has_weights:
            self.errors.append(f"generate #{sum(c[0] == 'generate' for c in self.calls)} sampled from discarded weights")
        self.params = params
        lp = lambda ids: [{t: SimpleNamespace(logprob=-0.1 * (k + 1))} for k, t in enumerate(ids)]  # noqa: E731
        outs = [SimpleNamespace(token_ids=[7, 258], logprobs=lp([7, 258]), finish_reason="stop"),
                SimpleNamespace(token_ids=[7, 8, 9], logprobs=lp([7, 8, 9]), finish_reason="length")]
        return [SimpleNamespace(outputs=[outs[j % 2] for j in range(params["n"])]) for _ in prompts]


def test_vllm_engine_call_sequence_on_a_stand_in():
    tok, base, actor, ref, critic, device = setup_models()
    fake = FakeVLLM()
    cfg = ppo.Config(seed=5, vllm_sleep_level=1)
    engine = runtime.VLLMEngine(cfg, rank=0, world=1, stop_ids=[258], stop_strings=[], device=device, llm=fake,
                            sampling_params=lambda **kw: kw)
    assert fake.calls == [("sleep", 1)]  # asleep from the start: the trainer owns the GPU
    with pytest.raises(RuntimeError, match="sync_weights"):  # its weights are not the actor's yet
        engine.generate([[1]], n=1, temperature=0.0, top_p=1.0, max_new_tokens=3)
    fake.calls.clear()
    ppo.sync_weights(actor, engine, 0)
    assert fake.calls == [("wake_up", ("weights",)), ("apply_model",), ("wake_up", ("kv_cache",)),
                          ("reset_prefix_cache",)]
    names = [n for n, *_ in fake.loaded]
    assert names == [n for n, _ in actor.named_parameters()]  # every parameter, in the module's order
    for (name, shape, dtype, t), (_, p) in zip(fake.loaded, ppo.stream_weights(actor)):
        assert shape == p.shape and dtype == torch.float32  # the CPU trainer's dtype (bf16 on GPU)
        torch.testing.assert_close(t, p)
    fake.calls.clear()
    samples = engine.generate([[1, 2], [3]], n=2, temperature=0.6, top_p=1.0, max_new_tokens=3)
    assert fake.calls == [("generate", 2)]  # already awake: no second wake-up
    assert fake.params["n"] == 2 and fake.params["temperature"] == 0.6 and fake.params["max_tokens"] == 3
    assert fake.params["stop_token_ids"] == [258] and fake.params["logprobs"] == 0
    assert [s.truncated for s in samples] == [False, True, False, True]
    assert samples[1].prompt_ids == [1, 2] and samples[2].prompt_ids == [3]
    assert samples[0].response_ids == [7, 258] and samples[0].engine_logprobs == [-0.1, -0.2]
    engine.sleep()
    engine.sleep()  # idempotent
    assert fake.calls[-1] == ("sleep", 1) and fake.calls.count(("sleep", 1)) == 1
    fake.calls.clear()
    ppo.sync_weights(actor, engine, 0)  # level 1 kept the weights: nothing to stream
    engine.generate([[1]], n=1, temperature=0.0, top_p=1.0, max_new_tokens=3)  # greedy eval
    assert fake.calls == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), ("generate", 1)]
    assert fake.params["temperature"] == 0.0 and fake.params["logprobs"] is None
    assert not fake.errors


@pytest.mark.parametrize("loss_agg,advantage", [("seq-mean-token-mean", "gae"), ("token-mean", "gae"),
                                                ("seq-mean-token-mean", "grpo")])
def test_accumulated_micro_batches_equal_one_big_batch(loss_agg, advantage, monkeypatch):
    """One optimizer step (plain SGD, no clipping of the norm) over a mini-batch of 8 ragged responses:
    micro-batches of 3, 3, 2 with gradient accumulation give the weights of one micro-batch of 8. The
    micro-batches take the mini-batch's rows by length (the shortest three, the next three, the longest two).
    Packed passes of at most 30 tokens (--train-forward-tokens 30: several passes, no padding) give them too,
    with and without a critic (GRPO)."""
    rank, world, device = runtime.init_distributed()
    cut, packs = [], []  # the rows of every micro-batch ppo_update trains on; every packed pass's tokens
    real_micro_batches, real_pack = runtime.micro_batches, runtime.pack_rows
    monkeypatch.setattr(runtime, "micro_batches", lambda batch, idx, size, device, *a: (
        cut.append((list(idx), size)) or real_micro_batches(batch, idx, size, device, *a)))
    monkeypatch.setattr(runtime, "pack_rows", lambda rows, device: (
        packs.append([len(x["ids"]) for x in rows]) or real_pack(rows, device)))
    g = torch.Generator().manual_seed(7)
    samples = []
    for _ in range(8):
        p = torch.randint(0, 256, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(0, 256, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        samples.append(runtime.Sample(p, r, False, None))
    scores = torch.tensor([1.0, -0.5, -1.0, 1.0, -0.5, 1.0, -1.0, -0.5])
    noise = 0.1 * torch.randn(8, 8, generator=g)

    def one_step(micro: int, tokens: int = 0) -> dict:
        actor = runtime.shard_model(runtime.load_model(TINY, seed=0), device)
        critic = runtime.shard_model(ppo.Critic(runtime.load_model(TINY, seed=1), "normal", seed=2), device)
        cfg = ppo.Config(train_batch_size=8, micro_train_batch_size=micro, micro_rollout_batch_size=8,
                         loss_agg=loss_agg, max_grad_norm=1e9, entropy_coef=0.01, kl_coef=0.05,
                         train_forward_tokens=tokens)
        batch = ppo.pad_samples(samples, 256)
        ppo.experience_forward(actor, actor, critic, batch, cfg, device)
        m = batch["response_mask"]
        batch["old_logp"] = (batch["old_logp"] + noise[:, : m.size(1)]) * m  # ratios off 1, some clipped
        batch["rewards"] = ppo.shape_rewards(scores, torch.zeros_like(m), m, cfg.kl_coef)
        adv, batch["returns"] = ppo.compute_gae(batch["rewards"], batch["values"], m, cfg.gamma, cfg.lam)
        batch["advantages"] = ppo.masked_whiten(adv, m)
        models = (actor, critic) if advantage == "gae" else (actor,)
        opts = [torch.optim.SGD(x.parameters(), lr=1.0) for x in models]
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in opts]
        learners = [ppo.Learner(n, m, o, s, cfg.max_grad_norm) for n, m, o, s in
                    zip(("actor", "critic"), models, opts, scheds)]
        stats = ppo.ppo_update(learners[0], learners[1] if len(learners) > 1 else None, batch, cfg, world,
                               device, train_actor=True, generator=torch.Generator().manual_seed(0))
        out = {"a." + n: t.clone() for n, t in ppo.stream_weights(actor)}
        if advantage == "gae":
            out.update({"c." + n: t.clone() for n, t in ppo.stream_weights(critic)})
        return out, stats

    big, big_stats = one_step(8)
    small, small_stats = one_step(3)
    length = [len(x.prompt_ids) + len(x.response_ids) for x in samples]
    idx, size = cut[-1]  # one_step(3)'s mini-batch: all 8 rows, shortest first
    assert size == 3 and sorted(idx) == list(range(8)) and [length[i] for i in idx] == sorted(length)
    packed, packed_stats = one_step(2, tokens=30)
    update_packs = packs[-3:]  # the update's passes (the experience forwards' packs come first)
    assert sorted(n for p in update_packs for n in p) == sorted(length) and sum(length) > 60
    assert all(sum(p) <= 30 for p in update_packs)  # no pass over the budget (no row is longer than it)
    start = {"a." + n: p.detach() for n, p in runtime.load_model(TINY, seed=0).named_parameters()}
    assert any((big[k] - start[k]).abs().max() > 1e-4 for k in start)  # the step did move the weights
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=2e-6, rtol=1e-5, msg=k)
        torch.testing.assert_close(packed[k], big[k], atol=2e-6, rtol=1e-5, msg=k)
    for k in ("pg_loss", "v_loss")[: 2 if advantage == "gae" else 1]:
        assert small_stats[k] == pytest.approx(big_stats[k], rel=1e-5, abs=1e-7)
        assert packed_stats[k] == pytest.approx(big_stats[k], rel=1e-5, abs=1e-7)


def test_packed_chunked_logprobs_equal_the_padded_full_ones():
    """runtime.packed_logprobs: rows packed into one sequence (position ids restart per row, no mask), the
    head run in pieces of 5 tokens (checkpointed): the same log-probs, entropies, values and gradients as
    the padded rows' full [rows, R, vocab] computation."""
    runtime.init_distributed()
    g = torch.Generator().manual_seed(5)
    samples = [runtime.Sample(torch.randint(0, 256, (n,), generator=g).tolist(),
                              torch.randint(0, 256, (r,), generator=g).tolist(), False, None)
               for n, r in ((3, 9), (7, 1), (2, 12), (5, 6))]
    batch = ppo.pad_samples(samples, 256)
    m = batch["response_mask"]
    actor = runtime.load_model(TINY, seed=0)
    critic = ppo.Critic(runtime.load_model(TINY, seed=1), "normal", seed=2)
    padded = (batch["input_ids"], batch["attention_mask"], batch["position_ids"], m.size(1))
    mb = runtime.pack_rows([runtime.row_parts(batch, i) for i in range(4)], torch.device("cpu"))
    assert mb["input_ids"].shape == (1, int(batch["attention_mask"].sum()))  # no padding
    packed = (mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["R"])
    monkey = runtime.LOGIT_CHUNK
    results = []
    for args in (padded, packed):
        actor.zero_grad()
        runtime.LOGIT_CHUNK = 5
        try:
            logp, ent = ppo.token_logprobs(actor, *args, 0.8, with_entropy=True)
        finally:
            runtime.LOGIT_CHUNK = monkey
        values = critic(*args)
        ((logp * m).sum() + (values * m).sum()).backward()
        grads = {n: p.grad.clone() for n, p in list(actor.named_parameters()) + list(critic.named_parameters())}
        critic.zero_grad()
        results.append((logp * m, ent.detach() * m, values.detach() * m, grads))
    for a, b in zip(results[0][:3], results[1][:3]):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    for n in results[0][3]:
        torch.testing.assert_close(results[0][3][n], results[1][3][n], atol=2e-6, rtol=1e-5, msg=n)


def test_checkpoint_retention_keeps_every_actor_and_prunes_resumable_state(tmp_path):
    """v0 kept every checkpoint (--save_steps 4, --max_ckpt_num 20000; the reported model is step 120 of 160):
    every checkpoint-<step>/actor stays; critic, optimizer and trainer state only for the newest `keep`."""
    from pathlib import Path
    rank, world, device = runtime.init_distributed()
    tok = AutoTokenizer.from_pretrained(TINY)
    actor = runtime.shard_model(runtime.load_model(TINY, seed=0), device)
    critic = runtime.shard_model(ppo.Critic(runtime.load_model(TINY, seed=0)), device)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (actor, critic)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in opts]
    learners = [ppo.Learner(name, m, o, s, 1.0) for name, m, o, s in zip(("actor", "critic"), (actor, critic), opts,
                                                                          scheds)]
    assert ppo.Config().keep_actor_weights is True
    for step in (4, 8, 12, 16):  # written behind (--async-save): each save waits for the one before
        runtime.save_checkpoint(tmp_path, step, learners, tok, {"position": step}, keep=2, whole_state={"critic"},
                                background=True)
    runtime.finish_saving()
    resumable = {p.name for p in tmp_path.glob("checkpoint-*") if (p / "trainer_state.pt").exists()}
    assert resumable == {"checkpoint-12", "checkpoint-16"}
    for step in (4, 8):
        p = tmp_path / f"checkpoint-{step}"
        assert sorted(x.name for x in p.iterdir()) == ["actor"]  # critic, optim, trainer_state pruned
        AutoModelForCausalLM.from_pretrained(p / "actor")  # what evaluate.py loads
    for step in (12, 16):
        assert {x.name for x in (tmp_path / f"checkpoint-{step}").iterdir()} >= {"actor", "critic", "optim",
                                                                              "trainer_state.pt"}
    assert runtime.latest_checkpoint(Path(tmp_path)).name == "checkpoint-16"
    # --no-keep-actor-weights: older checkpoints go whole, as before
    runtime.save_checkpoint(tmp_path, 20, learners, tok, {"position": 20}, keep=2, keep_weights=False,
                            whole_state={"critic"})
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-20"]


def tiny_learners(device):
    tok = AutoTokenizer.from_pretrained(TINY)
    actor = runtime.shard_model(runtime.load_model(TINY, seed=0), device)
    critic = runtime.shard_model(ppo.Critic(runtime.load_model(TINY, seed=0), "normal", seed=1), device)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (actor, critic)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in opts]
    return tok, [ppo.Learner(n, m, o, s, 1.0) for n, m, o, s in zip(("actor", "critic"), (actor, critic), opts, scheds)]


def test_async_save_returns_before_the_files_and_saves_the_weights_of_its_step(tmp_path, monkeypatch):
    """--async-save: save_checkpoint returns once the collectives are done, while rank 0's thread still writes
    (here held at a gate); training that goes on meanwhile (an optimizer step) does not reach the files: they
    hold the weights of the step that was saved."""
    import threading
    from safetensors.torch import load_file
    rank, world, device = runtime.init_distributed()
    tok, learners = tiny_learners(device)
    gate, real = threading.Event(), runtime.write_behind
    monkeypatch.setattr(runtime, "write_behind", lambda write, bg: real(lambda: (gate.wait(60), write()), bg))
    at_save = {k: v.detach().clone() for k, v in learners[0].model.state_dict().items()}
    final = runtime.save_checkpoint(tmp_path, 4, learners, tok, {"position": 4}, whole_state={"critic"},
                                    background=True)
    assert not final.exists() and (tmp_path / "checkpoint-4.tmp").is_dir()  # returned before the writes
    for x in learners:  # the next step's update while the save is in flight
        for p in x.model.parameters():
            p.grad = torch.ones_like(p)
        x.optimizer.step()
    assert not torch.equal(learners[0].model.model.embed_tokens.weight, at_save["model.embed_tokens.weight"])
    gate.set()
    runtime.finish_saving()
    assert final.is_dir() and not (tmp_path / "checkpoint-4.tmp").exists()
    assert runtime.checkpoint_problems(final) == [] and runtime.latest_checkpoint(tmp_path) == final
    saved = load_file(final / "actor" / "model.safetensors")
    assert saved.keys() == at_save.keys() - {"lm_head.weight"}  # tied to the embedding
    for k, v in saved.items():
        assert torch.equal(v, at_save[k]), k


def test_async_save_writes_the_same_files_as_a_synchronous_one(tmp_path):
    """The same bytes either way, and the HF folder as save_pretrained writes it: the same tensors and config."""
    import json
    from safetensors.torch import load_file
    rank, world, device = runtime.init_distributed()
    tok, learners = tiny_learners(device)
    for name, background in (("sync", False), ("async", True)):
        runtime.save_checkpoint(tmp_path / name, 4, learners, tok, {"position": 4}, whole_state={"critic"},
                                background=background)
    runtime.finish_saving()
    a, b = tmp_path / "sync" / "checkpoint-4", tmp_path / "async" / "checkpoint-4"
    files = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file())
    assert files == sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file())
    for f in files:
        if f.endswith(("safetensors", ".json", ".distcp")):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    learners[0].model.save_pretrained(tmp_path / "hf")
    ours, theirs = load_file(a / "actor" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((a / "actor" / "config.json").read_text())
    assert config == {**json.loads((tmp_path / "hf" / "config.json").read_text()), "use_cache": True}
    assert (a / "actor" / "generation_config.json").read_text() == (tmp_path / "hf" / "generation_config.json").read_text()
    AutoModelForCausalLM.from_pretrained(a / "actor")


def test_level_2_sleep_forgets_weights_and_the_next_sync_restores_them():
    tok, base, actor, ref, critic, device = setup_models()
    fake = FakeVLLM()
    engine = runtime.VLLMEngine(ppo.Config(), rank=0, world=1, stop_ids=[258], stop_strings=[], device=device, llm=fake,
                            sampling_params=lambda **kw: kw)
    assert engine.sleep_level == 2  # the recipe's default
    for _ in range(3):  # e.g. an eval, then two critic warm-up steps: the actor has not changed (version 0)
        ppo.sync_weights(actor, engine, 0)
        engine.generate([[1]], n=1, temperature=0.0, top_p=1.0, max_new_tokens=3)
        engine.sleep()
        assert engine.weights_version is None  # level 2 discarded them
    assert fake.calls.count(("apply_model",)) == 3 and not fake.errors


def run_main_on_stand_in(tmp_path, monkeypatch, sleep_level):
    """ppo.main, world of one, with the vLLM stand-in as its engine: critic warm-up steps, evals in between."""
    fake = FakeVLLM()

    def make_engine(cfg, model_config, tokenizer, rank, world, device):
        return runtime.VLLMEngine(cfg, rank, world, [258], [], device, llm=fake, sampling_params=lambda **kw: kw), [258]

    monkeypatch.setattr(ppo, "make_engine", make_engine)
    cfg = ppo.parse_args(["--preset", "tiny", "--output-dir", str(tmp_path), "--max-steps", "4",
                          "--critic-warmup-steps", "2", "--eval-every", "1", "--eval-size", "4",
                          "--rollout-batch-size", "4", "--n-samples-per-prompt", "2", "--train-batch-size", "8",
                          "--micro-train-batch-size", "8", "--save-every", "0", "--time-limit-minutes", "0",
                          "--vllm-sleep-level", str(sleep_level), "--engine", "vllm"])
    ppo.main(cfg)
    return fake


@pytest.mark.slow
def test_ppo_loop_never_samples_from_discarded_weights(tmp_path, monkeypatch):
    """Item 7 of issue 10: with level-2 sleep, the start eval, each eval and each critic warm-up step must re-send
    the weights (the old loop re-sent them only after actor updates and sampled from garbage)."""
    fake = run_main_on_stand_in(tmp_path, monkeypatch, 2)
    generates = [c for c in fake.calls if c[0] == "generate"]
    assert len(generates) == 1 + 4 + 3 + 1  # start eval, 4 rollouts, evals after steps 1-3, end eval
    assert not fake.errors, fake.errors
    assert fake.calls.count(("apply_model",)) == len(generates)  # every wake-up after level 2 needs the weights


@pytest.mark.slow
def test_ppo_loop_level_1_streams_only_after_actor_updates(tmp_path, monkeypatch):
    fake = run_main_on_stand_in(tmp_path, monkeypatch, 1)
    assert not fake.errors
    # version 0 (start eval, warm-up steps 1-2 and their evals, rollout 3), then once per actor update (steps 3, 4)
    assert fake.calls.count(("apply_model",)) == 3


@pytest.mark.slow
def test_models_load_and_shard_one_at_a_time_engine_last(tmp_path, monkeypatch):
    """Item 8 of issue 10: never three full copies on a host at once; the rollout engine after the trainer."""
    events = []
    load, shard, make = runtime.load_model, runtime.shard_model, ppo.make_engine
    monkeypatch.setattr(runtime, "load_model", lambda *a, **k: (events.append("load"), load(*a, **k))[1])
    monkeypatch.setattr(runtime, "shard_model", lambda *a, **k: (events.append("shard"), shard(*a, **k))[1])
    fake = FakeVLLM()

    def make_engine(cfg, model_config, tokenizer, rank, world, device):
        events.append("engine")
        return runtime.VLLMEngine(cfg, rank, world, [258], [], device, llm=fake, sampling_params=lambda **kw: kw), [258]

    monkeypatch.setattr(ppo, "make_engine", make_engine)
    cfg = ppo.parse_args(["--preset", "tiny", "--output-dir", str(tmp_path), "--max-steps", "1", "--test-file", "",
                          "--rollout-batch-size", "4", "--n-samples-per-prompt", "2", "--train-batch-size", "8",
                          "--micro-train-batch-size", "8", "--save-every", "0", "--engine", "vllm"])
    ppo.main(cfg)
    assert events == ["load", "shard", "load", "shard", "load", "shard", "engine"]


def test_forward_groups_fit_the_token_budget_and_pair_up():
    """Item 10 of issue 10: the experience forwards are batched by a token budget (few forwards), each group
    within budget, every row exactly once."""
    g = torch.Generator().manual_seed(0)
    samples = [runtime.Sample(list(range(int(torch.randint(3, 30, (1,), generator=g)))),
                          list(range(int(torch.randint(1, 60, (1,), generator=g)))), False, None) for _ in range(64)]
    batch = ppo.pad_samples(samples, 256)
    runtime.init_distributed()
    groups = runtime.forward_groups(batch, 0, 1024)
    assert sorted(i for grp in groups for i in grp) == list(range(64))
    for grp in groups:
        P = max(len(samples[i].prompt_ids) for i in grp)
        R = max(len(samples[i].response_ids) for i in grp)
        assert len(grp) == 1 or len(grp) * (P + R) <= 1024
    assert len(groups) <= 8  # 64 rows of <= 89 tokens: ~5,000 tokens; OpenRLHF's 2 rows per forward made 32
    assert max(map(len, runtime.forward_groups(batch, 4, 10**9))) == 4  # the row cap still holds


def test_ppo_vllm_engine_passes_only_tensor_parallel(monkeypatch):
    """Items 4 and 6 of issue 10: a world of one runs the in-process `uni` executor (external_launcher reads
    RANK/LOCAL_RANK from the environment); torchrun ranks are independent engines (no data_parallel_size)."""
    _, _, _, _, _, device = setup_models()
    built = []

    class RecordingLLM:
        def __init__(self, **kwargs):
            built.append(kwargs)

        def sleep(self, level):
            pass

    monkeypatch.setattr(runtime, "import_vllm", lambda: (RecordingLLM, dict))
    for world in (1, 4):
        runtime.VLLMEngine(ppo.Config(), rank=0, world=world, stop_ids=[258], stop_strings=[], device=device)
    assert [b["distributed_executor_backend"] for b in built] == ["uni", "external_launcher"]
    assert all(b["tensor_parallel_size"] == 1 and "data_parallel_size" not in b for b in built)
    assert all(b["load_format"] == "dummy" for b in built)  # its weights only ever come from the actor
    assert built[0]["enable_sleep_mode"] is False and built[0]["dtype"] == "float32"  # CPU: no sleep mode, fp32


def test_right_padded_rows_score_the_same_without_a_mask(monkeypatch):
    """attention_mask_or_none drops the mask only when no row is left-padded; the log-probs and values of real
    tokens are then exactly those computed with the mask (causal attention never sees the right padding)."""
    g = torch.Generator().manual_seed(3)
    samples = [runtime.Sample([5, 6, 7], torch.randint(0, 256, (n,), generator=g).tolist(), False, None) for n in (6, 2, 4)]
    batch = ppo.pad_samples(samples, 256)
    m = batch["response_mask"]
    args = (batch["input_ids"], batch["attention_mask"], batch["position_ids"], m.size(1))
    assert runtime.attention_mask_or_none(batch["attention_mask"]) is None  # same prompt lengths: right padding only
    ragged = ppo.pad_samples([runtime.Sample([5], [1, 2], False, None)] + samples, 256)["attention_mask"]
    assert runtime.attention_mask_or_none(ragged) is ragged  # a left-padded row keeps the mask
    actor = runtime.load_model(TINY, seed=0)
    critic = ppo.Critic(runtime.load_model(TINY, seed=1), "normal", seed=2)
    with torch.no_grad():
        causal = ppo.token_logprobs(actor, *args, 1.0, with_entropy=True), critic(*args)
        monkeypatch.setattr(runtime, "attention_mask_or_none", lambda mask: mask)
        masked = ppo.token_logprobs(actor, *args, 1.0, with_entropy=True), critic(*args)
    for a, b in ((causal[0][0], masked[0][0]), (causal[0][1], masked[0][1]), (causal[1], masked[1])):
        assert torch.equal(a * m, b * m)
