"""Write data/tiny/: the CPU world's model folder (config, tokenizer, generation config; no weights).

The tokenizer is byte-level BPE with no merges: 256 byte tokens plus Qwen's chat specials, so any
text round-trips and every character costs one token. The model is a ~1M-parameter Qwen2. The folder
holds no weights but an INIT_FROM_CONFIG marker file: only such a folder is initialised from config.json
with the run's seed (any other folder without weights is an error in sft.py, ppo.py and evaluate.py).

    python data/make_tiny_model.py            # rewrites data/tiny/
"""
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, chat open, chat close (EOS)

CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 256 + len(SPECIALS),
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "attention_dropout": 0.0,
    "use_cache": True,
    "use_sliding_window": False,
    "initializer_range": 0.02,
    "bos_token_id": 256,
    "eos_token_id": 258,
    "pad_token_id": 256,
    "torch_dtype": "float32",
}


def build_tokenizer() -> Tokenizer:
    byte_chars = ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 uses for raw bytes
    vocab = {_byte_to_unicode()[b]: b for b in range(256)}  # token id == byte value
    assert set(vocab) == set(byte_chars)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main(out: Path = Path(__file__).resolve().parent / "tiny") -> None:
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": CONFIG["max_position_embeddings"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": SPECIALS[1:]}, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    gen = {"bos_token_id": 256, "eos_token_id": [258, 256], "pad_token_id": 256, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / "INIT_FROM_CONFIG").write_text("This folder has no weights on purpose: the stages initialise the model "
                                          "from config.json with the run's seed.\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
