"""A language model's scored outputs kept compactly: per position, what fidelity and perplexity need, computed in
the worker batch by batch so a full logits tensor (tokens x vocabulary, 2 GiB for 2,048 tokens of a 262k
vocabulary) never crosses the pipe or reaches the disk.

Each position is one record (``RECORD`` fields):

- ``label``: log-probability of the true next token (perplexity);
- ``top1``: the most likely token (top-1 agreement);
- ``ids``/``logp``: the token ids of the *baseline's* ``TOP_K`` most likely tokens and this model's
  log-probabilities of them. The baseline chooses the ids; a candidate is scored on the same ids, so the KL
  divergence is computed over those tokens plus one bin for all the others (``token_kl``). That is the KL of the
  two distributions coarsened to ``TOP_K`` + 1 outcomes: never above the full KL, and equal to it when the
  vocabulary has at most ``TOP_K`` tokens; the baseline's mass outside the bin is reported with it
  (``outside_mass``) so a reader sees how much was merged.

All in float64 from the model's float32 logits.
"""

from __future__ import annotations

import numpy as np

from certify.metrics import log_softmax

TOP_K = 256
ROWS = 32  # positions turned into log-probabilities at once (32 x 262k x 8 bytes = 64 MiB)


def record_dtype(k: int) -> np.dtype:
    return np.dtype([("label", "f8"), ("top1", "i8"), ("ids", "i4", (k,)), ("logp", "f8", (k,))])


def is_records(outputs: np.ndarray) -> bool:
    return outputs.dtype.names is not None and "logp" in outputs.dtype.names


def token_scores(logits: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None,
                 top_k: int = TOP_K) -> np.ndarray:
    """Records ``[sequences, positions]`` from logits ``[sequences, positions, vocab]`` and the true next tokens
    ``[sequences, positions]``; ``ids`` (the baseline's records' ids) fixes which tokens' log-probabilities are
    kept, else this model's own ``top_k`` most likely (the baseline)."""
    sequences, positions, vocab = logits.shape
    k = min(top_k, vocab) if ids is None else ids.shape[-1]
    out = np.zeros((sequences, positions), dtype=record_dtype(k))
    for s in range(sequences):
        for start in range(0, positions, ROWS):
            rows = slice(start, min(start + ROWS, positions))
            lp = log_softmax(logits[s, rows])
            picked = out[s, rows]
            picked["label"] = np.take_along_axis(lp, labels[s, rows, None].astype(np.int64), axis=-1)[:, 0]
            picked["top1"] = lp.argmax(axis=-1)
            if ids is None:
                top = np.argpartition(-lp, k - 1, axis=-1)[:, :k] if k < vocab else np.tile(np.arange(vocab),
                                                                                          (len(lp), 1))
                order = np.argsort(-np.take_along_axis(lp, top, axis=-1), axis=-1, kind="stable")
                chosen = np.take_along_axis(top, order, axis=-1)
            else:
                chosen = ids[s, rows].astype(np.int64)
            picked["ids"] = chosen
            picked["logp"] = np.take_along_axis(lp, chosen, axis=-1)
            out[s, rows] = picked
    return out


ROUNDING = 1e-9  # a probability left outside the kept tokens below this is the sum's rounding, not mass


def _outside(logp: np.ndarray) -> np.ndarray:
    """The probability outside the kept tokens, per position (0 below ``ROUNDING``)."""
    rest = 1.0 - np.exp(logp).sum(axis=-1)
    return np.asarray(np.where(rest < ROUNDING, 0.0, np.minimum(rest, 1.0)))


def outside_mass(base: np.ndarray) -> np.ndarray:
    """The baseline's probability outside its kept tokens, per position."""
    return _outside(base["logp"])


def token_kl(base: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """KL(baseline || candidate) per position over the baseline's kept tokens and one bin for the rest (the
    candidate's rest floored at ``ROUNDING``, which can only lower the figure)."""
    if not np.array_equal(base["ids"], cand["ids"]):
        raise ValueError("the candidate's records were not scored on the baseline's token ids")
    log_p, log_q = base["logp"], cand["logp"]
    kept = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    rest_p, rest_q = _outside(log_p), np.maximum(_outside(log_q), ROUNDING)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(rest_p > 0, rest_p * (np.log(rest_p) - np.log(rest_q)), 0.0)
    return np.asarray(np.maximum(kept + rest, 0.0))  # rounding can give -1e-17 for identical rows
