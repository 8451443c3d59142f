"""sft.py: loss masking, data errors, checkpoint round trip, resume equivalence, FSDP2 2-rank == 1-process,
and a short tiny run that lowers the loss. The runs are real subprocess runs on tiny settings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
import sft  # noqa: E402

TINY = str(ROOT / "data" / "tiny")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# 6 steps of 16 sequences (2 micro-batches of 4 per rank on 2 ranks; 4 of 4 on one), checkpoint at 3
RUN = ["--preset", "tiny", "--max-steps", "6", "--train-batch-size", "16", "--micro-train-batch-size", "4",
       "--save-every", "3", "--test-file", "", "--lr", "3e-3", "--warmup-ratio", "0.34"]


def run_sft(out: Path, *extra: str, ranks: int = 1, timeout: int = 180) -> str:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                "--master_port", str(runtime._free_port())] if ranks > 1 else [sys.executable]
    cmd = [*launcher, str(ROOT / "sft.py"), *RUN, "--output-dir", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert "lm_head.weight" not in wa and "lm_head.weight" not in wb  # tied to the embedding: saved once
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """6 steps in one go, in one process."""
    out = tmp_path_factory.mktemp("straight")
    run_sft(out)
    return out


def cfg(**kw) -> sft.Config:
    return sft.Config(**{**sft.PRESETS["tiny"], **kw})


def test_prompt_tokens_carry_no_loss():
    tok = AutoTokenizer.from_pretrained(TINY)
    row = {"question": "347- 85", "solution": "347- 85=262\n\\boxed{262}"}
    ids, labels = sft.encode(row, tok, cfg(), tok.eos_token_id)
    prompt = "Q: 347- 85\nA:"
    n = len(prompt)
    assert ids == list((prompt + row["solution"]).encode()) + [tok.eos_token_id]
    assert labels[:n] == [-100] * n  # exactly the prompt positions are masked ...
    assert labels[n:] == ids[n:] and -100 not in labels[n:]  # ... and every response token, EOS included, is a target
    # the loss only sees response tokens: changing the prompt's labels to anything masked changes nothing
    model = AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(TINY))
    other = {"question": "9- 9", "solution": "junk"}
    batch = sft.collate([(ids, labels), sft.encode(other, tok, cfg(), tok.eos_token_id)], tok.pad_token_id)
    assert (batch["labels"][1, len(sft.encode(other, tok, cfg(), 258)[0]):] == -100).all()  # padding is masked
    logp = torch.log_softmax(model(input_ids=batch["input_ids"][:1]).logits[0], -1)
    manual = -sum(logp[t - 1, ids[t]] for t in range(n, len(ids)))
    single = sft.collate([(ids, labels)], tok.pad_token_id)
    torch.testing.assert_close(sft.token_nll_sum(model, single), manual, rtol=1e-5, atol=1e-5)


def test_prompt_field_is_used_verbatim_and_truncation():
    tok = AutoTokenizer.from_pretrained(TINY)
    ids, labels = sft.encode({"prompt": "P>", "response": "abc"}, tok, cfg(), 258)
    assert ids == [*b"P>abc", 258] and labels == [-100, -100, *b"abc", 258]
    ids, labels = sft.encode({"prompt": "P>", "response": "abcdef"}, tok, cfg(max_length=4), 258)
    assert ids == [*b"P>ab"] and labels == [-100, -100, *b"ab"]


@pytest.mark.parametrize("line, message", [
    ('{"question": "1+1", "answer": "2"}', "line 2: field 'response' or 'solution' missing"),
    ('{"solution": "2"}', "line 2: field 'prompt' or 'question' or 'problem' missing"),
    ('{"question": "1+1", "solution": 2}', "line 2: field 'solution' must be a string, got int"),
    ('{"question": "1+1", "solution": "2"', "line 2: invalid JSON"),
    ('["1+1", "2"]', "line 2: expected a JSON object"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "1+1", "solution": "\\\\boxed{2}"}\n' + line + "\n")
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\") + " " + message.replace("(", r"\(")):
        sft.read_rows(str(path), [sft.QUESTION_FIELDS, ("response", "solution")])


def test_over_long_examples_are_counted_and_dropped_by_default():
    """prompt + response + EOS > max_length: counted, dropped (default) or truncated; a prompt that fills the
    window is dropped either way and counted as such."""
    tok = AutoTokenizer.from_pretrained(TINY)
    rows = [{"prompt": "P>", "response": "ab"},        # 2 + 2 + EOS = 5: fits max_length 6
            {"prompt": "P>", "response": "abcdefgh"},  # 11: a long response (was silently truncated)
            {"prompt": "PPPPPPP>", "response": "a"},   # the prompt alone is over 6
            {"prompt": "P>", "response": "abc"}]       # 6: exactly fits, EOS kept
    assert sft.Config().long_examples == "drop"
    examples, n = sft.encode_all(rows, tok, cfg(max_length=6, long_examples="drop"), 258)
    assert n == {"over_long": 2, "long_prompt": 1, "dropped": 2, "truncated": 0}
    assert [e[0][-1] for e in examples] == [258, 258]  # every kept example ends with its EOS
    examples, n = sft.encode_all(rows, tok, cfg(max_length=6, long_examples="truncate"), 258)
    assert n == {"over_long": 2, "long_prompt": 1, "dropped": 1, "truncated": 1}
    assert examples[1] == ([*b"P>abcd"], [-100, -100, *b"abcd"])  # cut: no EOS
    assert sft.PRESETS["tiny"]["long_examples"] == "truncate"  # the demo's base.jsonl relies on it (docs/sft.md)


def test_math500_test_file_loads():
    """The README's --test-file data/eval/math500/test.jsonl: rows have `problem` and `answer`."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "math500" / "test.jsonl"
    assert path.exists(), f"missing {path} (../shared/data beside the checkout)"
    rows = sft.read_rows(str(path), [sft.QUESTION_FIELDS, ("answer",)])
    assert len(rows) == 500
    assert sft.prompt_of(rows[0], "simplerl").startswith("<|im_start|>system") and rows[0]["problem"] in \
        sft.prompt_of(rows[0], "simplerl")


def test_levels_filter_needs_a_level(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "1+1", "solution": "2", "level": 1}\n{"question": "1+1", "solution": "2"}\n')
    with pytest.raises(ValueError, match="line 2: field 'level'"):
        sft.read_rows(str(path), [("question",), ("solution",)], levels="1")
    assert len(sft.read_rows(str(path), [("question",), ("solution",)], levels="")) == 2


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [runtime.lr_factor(s, warmup=10, total=100, floor=0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


def test_data_order_is_seeded_and_an_epoch_is_a_permutation():
    steps = [sft.global_batch(s, 100, 16, seed=3) for s in range(6)]
    assert sorted(sum(steps, [])) == sorted(set(sum(steps, [])))  # no repeats within the epoch (6 x 16 <= 100)
    assert steps == [sft.global_batch(s, 100, 16, seed=3) for s in range(6)]
    assert steps[0] != sft.global_batch(0, 100, 16, seed=4)
    assert sft.global_batch(6, 100, 16, seed=3) != steps[0]  # the next epoch reshuffles


def test_checkpoint_round_trip_same_logits(tmp_path):
    """runtime.save_hf_checkpoint: sharded model -> HF folder -> from_pretrained gives the same logits."""
    rank, world, device = runtime.init_distributed()
    try:
        model = runtime.shard_model(runtime.load_model(TINY, seed=0), device)
        tok = AutoTokenizer.from_pretrained(TINY)
        x = torch.tensor([list(b"Q: 12+ 34\nA: 12+ 34=46")])
        with torch.no_grad():
            before = model(input_ids=x).logits
        runtime.save_hf_checkpoint(model, tok, str(tmp_path / "ckpt"))
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=x).logits, before, rtol=0, atol=1e-6)
        assert AutoTokenizer.from_pretrained(tmp_path / "ckpt")("1+1=2")["input_ids"] == tok("1+1=2")["input_ids"]
    finally:
        torch.distributed.destroy_process_group()


def test_batched_left_padded_generation_equals_one_by_one():
    """The eval generates left-padded batches; HF must give each prompt the answer it gives it alone."""
    tok = AutoTokenizer.from_pretrained(TINY)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(TINY)).eval()
    prompts = ["Q:  1+  2\nA:", "Q: 347- 85+ 12\nA:", "Q: 5\nA:"]
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=[258], pad_token_id=256)
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    batched = model.generate(**enc, **kw)[:, enc["input_ids"].shape[1]:]
    for i, p in enumerate(prompts):
        alone = model.generate(**tok([p], return_tensors="pt"), **kw)[0, -8:]
        assert batched[i].tolist() == alone.tolist()


@pytest.mark.slow
def test_short_run_lowers_the_loss_and_writes_its_outputs(straight):
    records = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6
    assert losses[-1] < 0.75 * losses[0]
    for key in ("lr", "grad_norm", "tokens_per_s", "ms_per_step"):
        assert key in records[-1]
    assert (straight / "curves.png").stat().st_size > 0
    assert (straight / "checkpoint-3" / "trainer_state.pt").exists()
    model = AutoModelForCausalLM.from_pretrained(straight / "final")  # a plain HF folder
    assert model.config.model_type == "qwen2"


@pytest.mark.slow
def test_resume_continues_exactly(straight, tmp_path):
    run_sft(tmp_path, "--stop-after", "3")  # "killed" right after the checkpoint at step 3
    assert not (tmp_path / "final").exists()
    (tmp_path / "checkpoint-4").mkdir()  # an incomplete checkpoint (no trainer_state.pt) is ignored
    out = run_sft(tmp_path, "--resume")
    assert "resumed from" in out and "checkpoint-3" in out
    assert_same_weights(tmp_path / "final", straight / "final", atol=1e-6)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process(straight, tmp_path):
    out = run_sft(tmp_path, "--test-file", str(ROOT / "data" / "synth" / "test.jsonl"), ranks=2)
    assert_same_weights(tmp_path / "final", straight / "final", atol=1e-5)
    assert "held-out greedy exact-match accuracy" in out and "on 330 problems" in out  # levels 1,2: 30 + 300


def test_renamed_flags_keep_their_old_spelling():
    """sft.py's flags carry ppo.py's (OpenRLHF's) names; the old spellings still parse to the same fields."""
    old = sft.parse_args(["--preset", "tiny", "--grad-clip", "2", "--global-batch-size", "16",
                          "--micro-batch-size", "8", "--max-new-tokens", "12"])
    new = sft.parse_args(["--preset", "tiny", "--max-grad-norm", "2", "--train-batch-size", "16",
                          "--micro-train-batch-size", "8", "--generate-max-len", "12"])
    assert old == new and (new.max_grad_norm, new.train_batch_size, new.micro_train_batch_size,
                           new.generate_max_len) == (2.0, 16, 8, 12)
