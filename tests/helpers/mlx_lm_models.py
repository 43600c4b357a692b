"""A tiny mlx-lm "llama" model folder for the MLX backend and recipe tests: ``config.json`` with the keys
``mlx_lm.models.llama.ModelArgs`` needs, random weights (fixed seed) saved as mlx-lm saves them
(``model.safetensors``), and a byte-level tokenizer (``tokenizer.json``: token id = UTF-8 byte, like the
mlx.nn tiny LM's ``"bytes"`` tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models import llama
from mlx_lm.utils import save_config, save_model

VOCAB = 256
CONFIG: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "vocab_size": VOCAB,
    "max_position_embeddings": 128, "rope_theta": 10000.0, "tie_word_embeddings": False,
}


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable}
    chars.update({b: chr(256 + i) for i, b in enumerate(others)})
    return chars


def write_byte_tokenizer(folder: Path) -> None:
    """A byte-level BPE without merges: ``tokenize(text)`` gives the text's UTF-8 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in byte_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def mlx_lm_folder(folder: Path, seed: int = 0, tokenizer: bool = True, **overrides: Any) -> tuple[Path, Any]:
    """Write a tiny mlx-lm llama folder; returns (folder, the model it was saved from)."""
    config = {**CONFIG, **overrides}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder, model)
    save_config(dict(config), folder / "config.json")
    if tokenizer:
        write_byte_tokenizer(folder)
    return folder, model
