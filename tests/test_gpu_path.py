"""The recipe's GPU path, checked on CPU: the defaults start, no silent fallback to HF generate or to CPU,
the start-up line, FSDP2 roots resharded after no-grad forwards, every rank seeing the same files, the
training-side models without a K/V cache, bf16 HF folders that say bf16."""
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

TRAIN = SHARED / "train" / "simplerl_zero_v0" / "math_level3to5_data_processed_with_qwen_prompt.json"
TOKENIZER = SHARED / "qwen2.5_tokenizer"
# Qwen/Qwen2.5-Math-7B's config.json, the fields that size it
QWEN_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=4096, rope_theta=10000.0,
               tie_word_embeddings=False)


def test_the_recipe_defaults_start(tmp_path):
    """`ppo.py` with every default but the model and data paths: validation passes and the start-up (batch
    split over 8 and 16 GPUs, the real prompts with the real tokenizer, the step count, the memory plan)
    runs, as the README's 8-GPU command does."""
    assert TRAIN.exists() and TOKENIZER.exists(), f"missing {SHARED} (../shared/data beside the checkout)"
    from transformers import AutoTokenizer
    cfg = ppo.parse_args(["--model", str(ROOT / "data" / "tiny"), "--train-file", str(TRAIN),
                          "--output-dir", str(tmp_path / "o")])
    defaults = ppo.Config()
    changed = {k for k in vars(defaults) if getattr(cfg, k) != getattr(defaults, k)}
    assert changed == {"model", "train_file", "output_dir"}
    assert cfg.micro_rollout_batch_size == 0  # the default: no cap on rows per experience forward
    ppo.validate(cfg)
    for world in (8, 16):
        assert ppo.prompts_per_rank(cfg, world) == 1024 // world
    rows, test_rows = ppo.load_data(cfg, AutoTokenizer.from_pretrained(str(TOKENIZER)))
    assert len(rows) == 8523 and test_rows == []
    steps, updates = ppo.count_steps(cfg, len(rows), 0, 8)
    assert (steps, updates) == (20 * (8523 // 1024), 20 * (8523 // 1024) * 64)
    plan = runtime.memory_plan(Qwen2Config(**QWEN_7B), 8, cfg, "cuda")
    assert 40e9 < plan["peak_training"] < 80e9 and plan["peak_generation"] < 80e9
    # no cap on rows: the experience forwards are bounded by --rollout-forward-tokens alone
    runtime.init_distributed()
    lengths = torch.tensor([[1] * 4000 + [0] * 24] * 6)
    batch = {"attention_mask": lengths, "response_mask": torch.ones(6, 3000)}
    assert [len(g) for g in ppo.forward_groups(batch, cfg.micro_rollout_batch_size, cfg.rollout_forward_tokens)
            ] == [2, 2, 2]
