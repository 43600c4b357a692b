"""BOS/EOS as a tokenizer adds them, found the one way every runtime's tokenizer allows: encode one word with and
without its special tokens and see what was added before and after (``special_tokens`` of a ``LanguageModel``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

PROBE = "a"


def added_specials(encode: Callable[[str, bool], Sequence[int]], source: str) -> dict[str, Any]:
    """``encode(text, add_special_tokens)`` gives token ids; the result is the ``special_tokens()`` record:
    ``add_bos``, ``bos``, ``add_eos``, ``eos`` and ``source`` (where the policy was read)."""
    plain = [int(t) for t in encode(PROBE, False)]
    full = [int(t) for t in encode(PROBE, True)]
    at = next((i for i in range(len(full)) if full[i:i + len(plain)] == plain), len(full))
    before, after = full[:at], full[at + len(plain):]
    return {"add_bos": bool(before), "bos": before[0] if before else None, "add_eos": bool(after),
            "eos": after[-1] if after else None, "source": source}
