"""Language-model fidelity, baseline vs candidate on the same tokens, in float64: the statistics
``llama-perplexity --kl-divergence`` reports.

- KL divergence of the candidate's next-token distribution from the baseline's, per token: mean with its
  standard error, median, p90, p99 and max;
- top-1 agreement ("same top token"): share of positions where both models rank the same token first, with its
  standard error;
- perplexity of both models on the true next tokens, and their ratio (candidate / baseline; 1.0 = no loss).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from certify.metrics import log_softmax, token_nll


def token_kl(base_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """KL(baseline || candidate) per position, ``[chunks, tokens]``, one chunk at a time to bound memory."""
    out = []
    for base, cand in zip(base_logits, cand_logits, strict=True):
        log_p, log_q = log_softmax(base), log_softmax(cand)
        out.append((np.exp(log_p) * (log_p - log_q)).sum(axis=-1))
    return np.asarray(np.maximum(np.stack(out), 0.0))  # rounding can give -1e-17 for identical rows


def _mean_with_error(values: np.ndarray) -> dict[str, float]:
    flat = values.reshape(-1)
    error = float(flat.std(ddof=1) / np.sqrt(flat.size)) if flat.size > 1 else 0.0
    return {"mean": float(flat.mean()), "stderr": error}


def fidelity(base_logits: np.ndarray, cand_logits: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    kl = token_kl(base_logits, cand_logits)
    same = (base_logits.argmax(axis=-1) == cand_logits.argmax(axis=-1)).astype(np.float64)
    flat = kl.reshape(-1)
    result: dict[str, Any] = {
        "tokens": int(flat.size),
        "kl_divergence": {**_mean_with_error(kl), "median": float(np.median(flat)),
                          "p90": float(np.percentile(flat, 90)), "p99": float(np.percentile(flat, 99)),
                          "max": float(flat.max())},
        "top1_agreement": _mean_with_error(same),
    }
    if labels is not None:
        base_ppl = float(np.exp(token_nll(base_logits, labels).mean()))
        cand_ppl = float(np.exp(token_nll(cand_logits, labels).mean()))
        result["perplexity"] = {"baseline": base_ppl, "candidate": cand_ppl, "ratio": cand_ppl / base_ppl}
    return result
