"""data/tiny: the CPU world's model folder. Tokenizer and config round trips."""
import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"


def test_tokenizer_round_trip():
    tok = AutoTokenizer.from_pretrained(TINY)
    text = "Q: 347- 85+ 12\nA:347- 85=262\n262+ 12=274\n\\boxed{274} é€"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # token id == byte value
    assert tok.decode(ids) == text
    specials = "<|im_start|>assistant<|im_end|><|endoftext|>"
    assert tok(specials, add_special_tokens=False)["input_ids"] == [257, *b"assistant", 258, 256]
    assert tok.eos_token_id == 258 and tok.pad_token_id == 256
    assert tok.decode([*b"7", 258]) == "7<|im_end|>"


def test_tokenizer_and_config_survive_save_and_reload(tmp_path):
    tok = AutoTokenizer.from_pretrained(TINY)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q:  2+  3\nA:  2+  3=5\n\\boxed{5}<|im_end|>"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    config = AutoConfig.from_pretrained(TINY)
    config.save_pretrained(tmp_path)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(AutoConfig.from_pretrained(tmp_path).to_dict()) == strip(config.to_dict())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.1e6
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied


def test_make_tiny_model_rewrites_the_committed_folder(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny_model", TINY.parent / "make_tiny_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    for f in TINY.iterdir():
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
