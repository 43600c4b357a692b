"""Tiny MLX models for the MLX backend and recipe tests: factories named in ``model.json`` and folder writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

MLP = "tests.helpers.mlx_models:mlp"
TINY_LM = "tests.helpers.mlx_models:tiny_lm"


class Mlp(nn.Module):
    """A classifier: x float32 [batch, features] -> logits [batch, classes]."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.layers = [nn.Linear(features, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, classes)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers[:-1]:
            x = nn.relu(layer(x))
        return self.layers[-1](x)


class TinyLM(nn.Module):
    """A causal LM: int tokens [batch, n] -> logits [batch, n, vocab] (token + position embeddings, pre-norm
    transformer blocks with a causal mask, a linear head)."""

    def __init__(self, vocab: int = 256, dims: int = 64, heads: int = 4, layers: int = 2, context: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dims)
        self.position = nn.Embedding(context, dims)
        self.blocks = [nn.TransformerEncoderLayer(dims, heads, mlp_dims=4 * dims, norm_first=True)
                       for _ in range(layers)]
        self.norm = nn.LayerNorm(dims)
        self.head = nn.Linear(dims, vocab)

    def __call__(self, tokens: mx.array) -> mx.array:
        n = tokens.shape[1]
        x = self.embed(tokens) + self.position(mx.arange(n))
        mask = nn.MultiHeadAttention.create_additive_causal_mask(n)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def mlp(**kwargs: Any) -> Mlp:
    return Mlp(**kwargs)


def tiny_lm(**kwargs: Any) -> TinyLM:
    return TinyLM(**kwargs)


def write_folder(folder: Path, module: nn.Module, spec: dict[str, Any], weights: str = "weights.safetensors"
                 ) -> Path:
    """Save ``module``'s weights and ``spec`` as an MLX model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    mx.eval(module.parameters())
    module.save_weights(str(folder / weights))
    (folder / "model.json").write_text(json.dumps(spec))
    return folder


def mlp_folder(folder: Path, seed: int = 0, **kwargs: Any) -> tuple[Path, Mlp]:
    mx.random.seed(seed)
    model = mlp(**kwargs)
    features = kwargs.get("features", 64)
    spec = {"factory": MLP, "kwargs": kwargs,
            "inputs": [{"name": "x", "shape": ["batch", features], "dtype": "float32"}]}
    return write_folder(folder, model, spec), model


def lm_folder(folder: Path, seed: int = 0, **kwargs: Any) -> tuple[Path, TinyLM]:
    mx.random.seed(seed)
    model = tiny_lm(**kwargs)
    spec = {"factory": TINY_LM, "kwargs": kwargs, "kind": "language_model", "vocab": kwargs.get("vocab", 256),
            "tokenizer": "bytes", "context": kwargs.get("context", 128)}
    return write_folder(folder, model, spec), model
