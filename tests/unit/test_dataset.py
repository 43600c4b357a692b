"""Dataset loading: .npz keys, module:function loaders (returned or yielded batches), limits, bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from certify.measure.dataset import DatasetError, load_dataset, speed_batch
from certify.plan import Dataset


def loader(name: str, **kw: object) -> Dataset:
    return Dataset(path=None, loader=f"tests.helpers.loaders:{name}", inputs=(("", "x"),), labels=None, **kw)  # type: ignore[arg-type]


def test_yielded_batches_are_concatenated_in_order() -> None:
    inputs, labels = load_dataset(loader("batches"))
    assert inputs[""].shape == (12, 3) and inputs[""][0, 0] == 0 and inputs[""][-1, -1] == 35
    assert labels is not None and labels.tolist() == list(range(12))


def test_named_inputs_without_labels() -> None:
    inputs, labels = load_dataset(loader("named_inputs"))
    assert set(inputs) == {"a", "b"} and labels is None


def test_limit_applies_to_inputs_and_labels() -> None:
    inputs, labels = load_dataset(loader("batches", limit=5))
    assert inputs[""].shape[0] == 5 and labels is not None and labels.shape[0] == 5


@pytest.mark.parametrize(("name", "words"), [
    ("ragged", "disagree on the number of samples"),
    ("not_a_tuple", "must return or yield (inputs, labels)"),
    ("raises", "RuntimeError: database is down"),
    ("missing_function", "has no attribute 'missing_function'"),
    ("fails_midway", "OSError: connection reset"),
])
def test_bad_loaders_give_clear_errors(name: str, words: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(loader(name))
    assert words in info.value.message


def test_a_loader_runs_in_a_child_so_its_crash_is_a_dataset_error() -> None:
    data = Dataset(path=None, loader="os:abort", inputs=(("", "x"),), labels=None)
    with pytest.raises(DatasetError) as info:
        load_dataset(data)
    assert info.value.message.startswith("dataset loader 'os:abort' crashed (SIGABRT)")
    assert "python -c 'import os; os.abort()'" in info.value.hint


def test_a_loader_that_hangs_is_killed_at_the_timeout() -> None:
    with pytest.raises(DatasetError, match=r"did not return within 0\.5 s; it was killed") as info:
        load_dataset(loader("hangs"), timeout_s=0.5)
    assert "measure.timeout_s" in info.value.hint


def test_a_loader_that_exits_and_a_failure_is_not_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match=r"'tests\.helpers\.loaders:exits' exited with code 2"):
        load_dataset(loader("exits"))
    monkeypatch.setattr("certify.measure.dataset._run_child", lambda *a: pytest.fail("the loader ran again"))
    with pytest.raises(DatasetError, match="exited with code 2"):  # the next case of that model: the same error
        load_dataset(loader("exits"))


def test_a_loaders_prints_do_not_corrupt_its_data() -> None:
    inputs, labels = load_dataset(loader("chatty"))
    assert inputs[""].shape == (4, 2) and labels is not None and labels.tolist() == [0, 1, 2, 3]


def test_npz_and_speed_batch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", pixels=np.arange(20.0).reshape(10, 2), y=np.arange(10))
    data = Dataset(path=tmp_path / "d.npz", loader=None, inputs=(("in", "pixels"),), labels="y")
    inputs, labels = load_dataset(data)
    assert inputs["in"].shape == (10, 2) and labels is not None and labels[3] == 3
    assert speed_batch(inputs, 2)["in"].tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_empty_npz_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 2)), y=np.zeros(0))
    with pytest.raises(DatasetError, match="has no samples"):
        load_dataset(Dataset(path=tmp_path / "e.npz", loader=None, inputs=(("", "x"),), labels="y"))


def test_text_is_cut_into_windows_whose_labels_are_the_next_tokens(tmp_path: Path) -> None:
    from certify.measure.dataset import text_chunks

    dataset = Dataset(path=None, loader=None, inputs=(("", "tokens"),), labels="next_tokens",
                      text=tmp_path / "corpus.txt", context=4, chunks=2)
    inputs, labels, facts = text_chunks(list(range(100, 113)), dataset)
    assert inputs[""].tolist() == [[100, 101, 102, 103], [105, 106, 107, 108]]
    assert labels.tolist() == [[101, 102, 103, 104], [106, 107, 108, 109]] and inputs[""].dtype == np.int32
    assert not facts["bos_prepended"] and facts["scored_tokens"] == 8 and facts["windows"] == 2
    with pytest.raises(DatasetError, match="3 tokens, fewer than one window of 5 tokens \\(context 4 \\+ 1\\)"):
        text_chunks([1, 2, 3], dataset)


def test_a_model_that_asks_for_bos_has_every_window_start_with_it(tmp_path: Path) -> None:
    """BOS first, then context - 1 text tokens; every text token of the window is scored, the first one as BOS's
    next token (how the model sees a text in use); EOS ends the text when the metadata asks for it."""
    from certify.measure.dataset import same_tokenization, text_chunks

    dataset = Dataset(path=None, loader=None, inputs=(("", "tokens"),), labels="next_tokens",
                      text=tmp_path / "corpus.txt", context=4, chunks=3)
    special = {"add_bos": True, "bos": 2, "add_eos": True, "eos": 1, "source": "GGUF metadata"}
    inputs, labels, facts = text_chunks(list(range(100, 111)), dataset, special)
    assert inputs[""].tolist() == [[2, 100, 101, 102], [2, 104, 105, 106], [2, 108, 109, 110]]
    assert labels.tolist() == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109, 110, 1]]
    assert facts["bos_prepended"] and facts["text_tokens"] == 12 and facts["source"] == "GGUF metadata"
    with pytest.raises(DatasetError, match="fewer than one window of 4 tokens \\(context 4\\)"):
        text_chunks([1, 2], dataset, special)

    class Worker:  # a candidate's worker: tokenizes as it was told to
        def __init__(self, answer: dict[str, object]) -> None:
            self.answer = answer

        def call(self, command: str, **_: object) -> object:
            return self.answer if command == "text_tokens" else "?"

    (tmp_path / "corpus.txt").write_text("text")
    same_tokenization(dataset, facts, Worker({"tokens": list(range(100, 111)), "special": special}), None, 1.0)
    with pytest.raises(DatasetError, match=r"BOS/EOS policy differs.*add_bos False vs True.*bos None vs 2"):
        same_tokenization(dataset, facts, Worker({"tokens": list(range(100, 111)),
                                                  "special": {**special, "add_bos": False}}), None, 1.0)
