"""Load a plan's evaluation data: arrays keyed by model input ("" = the model's only input) and labels."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from certify.errors import CertifyError, first_line
from certify.measure import batching
from certify.plan import Dataset, Layout, Measure, ModelRef

Arrays = tuple[dict[str, np.ndarray], np.ndarray | None]


class DatasetError(CertifyError):
    """The dataset cannot be read or is inconsistent."""


def load_dataset(dataset: Dataset, layout: Layout | None = None, timeout_s: float = Measure.timeout_s) -> Arrays:
    """Inputs keyed by model input name and labels; samples counted and limited along each input's batch axis
    (``layout``, the plan's ``[models.inputs]``); labels hold one row per sample. A ``loader`` runs in a child
    process that has ``timeout_s`` (the plan's ``measure.timeout_s``) to answer."""
    layout = layout or Layout()
    if dataset.path is not None:
        with np.load(dataset.path, allow_pickle=False) as npz:
            inputs = {name: np.asarray(npz[key]) for name, key in dataset.inputs}
            labels = np.asarray(npz[dataset.labels]) if dataset.labels else None
        where = str(dataset.path)
    else:
        assert dataset.loader is not None
        inputs, labels = _loaded_in_child(dataset.loader, layout, timeout_s)
        where = dataset.loader
    if dataset.limit:
        inputs = batching.select(layout, inputs, slice(0, dataset.limit))
        labels = labels[: dataset.limit] if labels is not None else None
    _check_lengths(inputs, labels, where, layout)
    return inputs, labels


def load_text_dataset(dataset: Dataset, tokenizer: ModelRef, timeout_s: float
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """A language model's evaluation data: the text tokenized by ``tokenizer`` (the baseline, in a worker), with
    BOS/EOS as its metadata asks, cut into ``chunks`` windows of ``context`` tokens; labels are each position's next
    token. The third part records the tokenization (``text_chunks``)."""
    from certify.measure.client import open_worker

    with open_worker("baseline", tokenizer, timeout_s) as worker:
        worker.call("load", ref=tokenizer)
        answer = worker.call("text_tokens", text=read_text(dataset))
    return text_chunks(answer["tokens"], dataset, answer["special"])


def special_policy(special: dict[str, Any]) -> dict[str, Any]:
    """What of a model's BOS/EOS metadata changes the scored tokens: whether each is added, and its id if so."""
    return {"add_bos": bool(special.get("add_bos")), "bos": special.get("bos") if special.get("add_bos") else None,
            "add_eos": bool(special.get("add_eos")), "eos": special.get("eos") if special.get("add_eos") else None}


def same_tokenization(dataset: Dataset, baseline: dict[str, Any], worker: Any, baseline_ref: ModelRef,
                      timeout_s: float) -> None:
    """The candidate in ``worker`` tokenizes the dataset's text exactly as the baseline did (``baseline``, the
    facts of ``load_text_dataset``): the same BOS/EOS policy and the same ids, else a DatasetError naming the first
    differing token (position, both ids and their text), since the candidate's logits would score other tokens."""
    answer = worker.call("text_tokens", text=read_text(dataset))
    tokens, special = [int(t) for t in answer["tokens"]], dict(answer["special"])
    mine, theirs = special_policy(special), special_policy(baseline)
    if differ := [k for k in mine if mine[k] != theirs[k]]:
        raise DatasetError("the candidate's BOS/EOS policy differs from the baseline's: " + ", ".join(
            f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in differ)
            + f" (candidate: {special.get('source')}; baseline: {baseline.get('source')})",
            hint="certify a candidate converted from the baseline with its tokenizer metadata kept")
    if ids_digest(tokens) == baseline.get("ids_sha256"):
        return
    from certify.measure.client import open_worker

    with open_worker("baseline", baseline_ref, timeout_s) as base:
        base.call("load", ref=baseline_ref)
        expected = [int(t) for t in base.call("tokenize", text=read_text(dataset))]
        at = next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b),
                  min(len(tokens), len(expected)))
        base_piece = f"{expected[at]} {base.call('detokenize', tokens=expected[at:at + 1])!r}" \
            if at < len(expected) else "end of text"
    cand_piece = f"{tokens[at]} {worker.call('detokenize', tokens=tokens[at:at + 1])!r}" \
        if at < len(tokens) else "end of text"
    raise DatasetError(f"the candidate tokenizes dataset.text {dataset.text} differently from the baseline: first "
                       f"difference at token {at}: candidate {cand_piece}, baseline {base_piece} ({len(tokens)} vs "
                       f"{len(expected)} tokens)",
                       hint="the candidate's vocabulary is not the baseline's, so its logits would score other "
                            "tokens: convert it from the baseline with the same tokenizer")


def ids_digest(tokens: list[int]) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype="<i8").tobytes()).hexdigest()


def read_text(dataset: Dataset) -> str:
    assert dataset.text is not None
    try:
        return dataset.text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"dataset.text {dataset.text}: cannot read it as UTF-8 text ({exc})",
                           hint="give a UTF-8 text file") from None


def text_chunks(tokens: list[int], dataset: Dataset, special: dict[str, Any] | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Windows of the text's tokens. When the model asks for BOS (``special["add_bos"]``) each window is BOS and
    ``context`` - 1 text tokens, scored on its ``context`` next tokens (every window starts as the model's
    inputs do in use); otherwise ``context`` tokens scored on the next ones. With ``add_eos`` the text ends in EOS."""
    special = dict(special or {"add_bos": False, "add_eos": False, "source": "not given"})
    text_ids = list(tokens)
    policy = special_policy(special)
    bos = policy["bos"]
    if policy["eos"] is not None:
        tokens = [*tokens, int(policy["eos"])]
    window = dataset.context if bos is not None else dataset.context + 1
    count = min(dataset.chunks, len(tokens) // window)
    if count == 0:
        raise DatasetError(f"dataset.text {dataset.text}: {len(tokens)} tokens, fewer than one window of "
                           f"{window} tokens (context {dataset.context}{'' if bos is not None else ' + 1'})",
                           hint="use a longer text or a smaller dataset.context")
    windows = np.asarray(tokens[: count * window], dtype=np.int32).reshape(count, window)
    facts = {**special, "text_tokens": len(tokens), "ids_sha256": ids_digest(text_ids), "windows": count,
             "scored_tokens": count * dataset.context, "bos_prepended": bos is not None}
    if bos is not None:
        inputs = np.concatenate([np.full((count, 1), bos, dtype=np.int32), windows[:, :-1]], axis=1)
        return {"": inputs}, windows, facts
    return {"": windows[:, :-1]}, windows[:, 1:], facts


def speed_batch(inputs: dict[str, np.ndarray], batch_size: int, layout: Layout | None = None
                ) -> dict[str, np.ndarray]:
    """The identical input every speed and memory run uses: the first ``batch_size`` samples (along each input's
    batch axis); for a streaming model, their first chunk (the state carried from there)."""
    layout = layout or Layout()
    return batching.first_step(layout, batching.select(layout, inputs, slice(0, batch_size)))


_FAILED: dict[tuple[str, Layout], DatasetError] = {}  # a loader that failed once is not re-run for each case


def _loaded_in_child(target: str, layout: Layout, timeout_s: float) -> Arrays:
    """``from_loader`` in a child process (``certify.measure.dataset_child``): its crash, signal, hang or exception
    is this model's DatasetError, never the session's end. A failure is remembered for the process's lifetime."""
    if (target, layout) in _FAILED:
        failed = _FAILED[(target, layout)]
        raise DatasetError(failed.message, hint=failed.hint)
    try:
        return _run_child(target, layout, timeout_s)
    except DatasetError as exc:
        _FAILED[(target, layout)] = exc
        raise


def _run_child(target: str, layout: Layout, timeout_s: float) -> Arrays:
    from certify.measure import dataset_child

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with tempfile.TemporaryDirectory(prefix="certify-dataset-") as tmp:
        folder = Path(tmp)
        with (folder / "log").open("w+b") as log:
            try:
                code = subprocess.run([sys.executable, "-m", "certify.measure.dataset_child", tmp],
                                      input=pickle.dumps((target, layout)), stdout=log, stderr=log, env=env,
                                      timeout=timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                raise DatasetError(f"dataset loader {target!r} did not return within {timeout_s:g} s; it was "
                                   "killed", hint="raise measure.timeout_s in the plan if the loader is just slow"
                                   ) from None
            log.seek(0)
            last = first_line("\n".join(reversed(log.read().decode("utf-8", "replace").splitlines())))
        if (folder / dataset_child.ERROR).is_file():
            error = json.loads((folder / dataset_child.ERROR).read_text(encoding="utf-8"))
            raise DatasetError(str(error["message"]), hint=str(error["hint"]))
        if code != 0 or not (folder / dataset_child.DATA).is_file():
            raise _crashed(target, code, last)
        arrays: Arrays = pickle.loads((folder / dataset_child.DATA).read_bytes())
        return arrays


def _crashed(target: str, code: int, last: str) -> DatasetError:
    module, _, function = target.partition(":")
    cause = f"crashed ({_signal_name(-code)})" if code < 0 else f"exited with code {code}"
    if code == -signal.SIGKILL:
        cause += ", killed from outside: most likely the out-of-memory killer"
    said = f"; its last output: {last}" if last else ""
    return DatasetError(f"dataset loader {target!r} {cause} before returning the data{said}",
                        hint=f"reproduce it alone: python -c 'import {module}; {module}.{function}()'; this model's "
                        "cases are ERROR, the other models' results are kept")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def from_loader(target: str, layout: Layout) -> Arrays:
    """Call a ``module:function`` returning or yielding ``(inputs, labels)``, in this process; inputs an array or a
    dict. Yielded parts (batches, or a streaming model's sequences) are joined along each input's batch axis."""
    module_name, _, attr = target.partition(":")
    try:
        produced: Any = getattr(importlib.import_module(module_name), attr)()
        batches = [produced] if isinstance(produced, tuple) else list(produced)
    except Exception as exc:
        raise DatasetError(f"dataset.loader {target!r} failed: {type(exc).__name__}: {first_line(str(exc))}",
                           hint="the loader must be importable and return (inputs, labels)") from None
    if not batches or not all(isinstance(b, tuple) and len(b) == 2 for b in batches):
        raise DatasetError(f"dataset.loader {target!r} must return or yield (inputs, labels) tuples")
    as_dicts = [b[0] if isinstance(b[0], dict) else {"": b[0]} for b in batches]
    try:
        inputs = {k: _joined([np.asarray(d[k]) for d in as_dicts], batching.input_axis(layout, k))
                  for k in as_dicts[0]}
        labels = None if batches[0][1] is None else np.concatenate([np.asarray(b[1]) for b in batches])
    except (KeyError, ValueError, TypeError) as exc:
        raise DatasetError(f"dataset.loader {target!r}: its parts cannot be joined: {type(exc).__name__}: "
                           f"{first_line(str(exc))}", hint="every part needs the same inputs, shaped alike but for "
                           "the batch axis") from None
    return inputs, labels


def _check_lengths(inputs: dict[str, np.ndarray], labels: np.ndarray | None, where: str, layout: Layout) -> None:
    try:
        lengths = {k or "inputs": n for k, n in batching.count(layout, inputs).items()}
    except CertifyError as exc:
        raise DatasetError(f"{where}: {exc.message}", hint=exc.hint) from None
    unbatched = [k for k, v in inputs.items() if v.ndim == 0 and batching.input_axis(layout, k) is not None]
    if unbatched:
        raise DatasetError(f"{where}: input(s) {unbatched} are scalars, so they hold no samples",
                           hint="declare them [models.inputs.NAME] batch_axis = 'none' (fed whole every call), "
                                "or give a constant: value = ...")
    if labels is not None:
        lengths["labels"] = labels.shape[0] if labels.ndim else 0
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{where}: arrays disagree on the number of samples: {lengths}",
                           hint="every input needs its samples on its batch axis (axis 0 unless [models.inputs.NAME] "
                                "batch_axis says otherwise) and the labels one row per sample")
    if 0 in lengths.values():
        raise DatasetError(f"{where}: the dataset has no samples", hint="check the file and the plan's limit")


def _joined(parts: list[np.ndarray], axis: int | None) -> np.ndarray:
    if axis is None or parts[0].ndim == 0:
        return parts[0]
    return np.concatenate(parts, axis=axis)
