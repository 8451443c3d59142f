"""Write a Qwen2.5-Math-7B-shaped toy model: the recipe's architecture and tokenizer with only the sizes
scaled down, for rehearsing the GPU recipe on a CPU (docs/gpu.md: the rehearsal).

Kept from Qwen2.5-Math-7B's config.json: the 152,064-row embedding and an untied LM head over the
151,665-token Qwen2.5 tokenizer, grouped-query attention, rope theta 10,000, 4,096 positions, SiLU MLP,
RMSNorm 1e-6, the special tokens. Scaled down: hidden 128, 4 heads and 2 KV heads (head dim 32: vLLM's CPU
attention has no kernel for 16), 2 layers, MLP 256. ~39M parameters, 99% of them the embedding and the
head. Random weights (seeded), saved as safetensors: a real weights folder, loaded like any checkpoint.

    python data/make_recipe_toy.py --tokenizer ../shared/data/qwen2.5_tokenizer --out runs/recipe-toy
"""
import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

# Qwen2.5-Math-7B's config with hidden, heads, layers and MLP scaled down (its EOS: <|endoftext|>, 151643)
SHAPE = dict(vocab_size=152064, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
             tie_word_embeddings=False, hidden_act="silu", rms_norm_eps=1e-6, use_sliding_window=False,
             sliding_window=4096, max_window_layers=2, attention_dropout=0.0, initializer_range=0.02,
             bos_token_id=151643, eos_token_id=151643)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True, help="the Qwen2.5 tokenizer folder")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--seed", type=int, default=0, help="the random init's seed")
    args = p.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPE))
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {Path(args.out)}: {n / 1e6:.1f}M parameters, vocabulary {len(tokenizer)} tokens "
          f"in {SHAPE['vocab_size']} rows, untied head")


if __name__ == "__main__":
    main()
