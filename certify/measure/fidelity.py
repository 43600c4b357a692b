"""Language-model fidelity, baseline vs candidate on the same tokens, in float64, from their compact records
(``certify.measure.logprobs``): the statistics
``llama-perplexity --kl-divergence`` reports.

- KL divergence of the candidate's next-token distribution from the baseline's, per token, over the baseline's
  ``logprobs.TOP_K`` most likely tokens and one bin for the rest (exact for a vocabulary of at most that many;
  the merged mass is reported): mean with its standard error, median, p90, p99 and max;
- top-1 agreement ("same top token"): share of positions where both models rank the same token first, with its
  standard error;
- perplexity of both models on the true next tokens, and their ratio (candidate / baseline; 1.0 = no loss).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from certify.measure import logprobs


def _mean_with_error(values: np.ndarray) -> dict[str, float]:
    flat = values.reshape(-1)
    error = float(flat.std(ddof=1) / np.sqrt(flat.size)) if flat.size > 1 else 0.0
    return {"mean": float(flat.mean()), "stderr": error}


def fidelity(base: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """The statistics from both models' records (``certify.measure.logprobs``) on the same tokens."""
    kl = logprobs.token_kl(base, cand)
    same = (base["top1"] == cand["top1"]).astype(np.float64)
    flat, outside = kl.reshape(-1), logprobs.outside_mass(base).reshape(-1)
    result: dict[str, Any] = {
        "tokens": int(flat.size),
        "kl_divergence": {**_mean_with_error(kl), "median": float(np.median(flat)),
                          "p90": float(np.percentile(flat, 90)), "p99": float(np.percentile(flat, 99)),
                          "max": float(flat.max()), "kept_tokens": int(base["ids"].shape[-1]),
                          "outside_mass": {"mean": float(outside.mean()), "max": float(outside.max())}},
        "top1_agreement": _mean_with_error(same),
    }
    if labels is not None:
        base_ppl, cand_ppl = float(np.exp(-base["label"].mean())), float(np.exp(-cand["label"].mean()))
        result["perplexity"] = {"baseline": base_ppl, "candidate": cand_ppl, "ratio": cand_ppl / base_ppl}
    return result
