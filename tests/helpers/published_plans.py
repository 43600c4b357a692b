"""Datasets and altered model copies for the published-model acceptance tests (tests/acceptance/
test_published_models.py): inputs each published model really responds to, built deterministically, and the
"bad candidate" copies (one weight tensor scrambled or perturbed) and fixed-batch copies made with onnx."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# ---- altered copies of an ONNX model ------------------------------------------------------------------------------


def altered(source: Path, out: Path, tensor: str, *, noise: float = 0.0, seed: int = 0) -> Path:
    """A copy of ``source`` with the initializer ``tensor`` changed: its values permuted at random
    (``noise = 0``), else Gaussian noise of ``noise`` times its standard deviation added."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name == tensor:
            values = numpy_helper.to_array(init)
            if noise:
                changed = values + rng.normal(0.0, noise * float(values.std()), values.shape)
            else:
                changed = rng.permutation(values.reshape(-1)).reshape(values.shape)
            init.CopyFrom(numpy_helper.from_array(changed.astype(values.dtype), tensor))
            break
    else:
        raise KeyError(f"{source.name} has no initializer {tensor!r}")
    onnx.save(model, str(out))
    return out


def fixed_batch(source: Path, out: Path, size: int = 1) -> Path:
    """A copy of ``source`` whose inputs and outputs declare a fixed batch of ``size`` (dim 0) instead of a
    symbolic one, as exporters write models for NPUs; shape inference is re-run so the graph stays consistent."""
    import onnx

    model = onnx.load(str(source))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = size
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


# ---- NudeNet: synthetic faces ----------------------------------------------------------------------------------

def _ellipse(yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """A soft-edged filled ellipse (1 inside, ramping to 0 over about 2 pixels at the rim)."""
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1 - d) * min(rx, ry) / 2.0, 0, 1)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur of a [C, H, W] image (edges repeated)."""
    radius = 3 * int(np.ceil(sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    h, w = image.shape[1:]
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    rows = sum(t * padded[:, i:i + h, :] for i, t in enumerate(taps))
    return np.asarray(sum(t * rows[:, :, i:i + w] for i, t in enumerate(taps)))


def faces(n: int, seed: int = 0, side: int = 320) -> np.ndarray:
    """``n`` RGB images [n, 3, side, side] float32 in [0, 1], each one to three cartoon faces (a skin-toned oval
    with hair, eyes, brows, nose and mouth, 35-60 px tall) on a shaded background, blurred (sigma 2 px) as a camera
    would. Random noise and skin-toned blobs give NudeNet no detection at score 0.25; these give it about 1.4
    faces an image (FACE_FEMALE, scores 0.27 to 0.8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    out = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        img = np.ones((3, side, side), np.float32) * rng.uniform(0.2, 0.8, 3).astype(np.float32)[:, None, None]
        img += (yy / side * rng.uniform(-0.2, 0.2))[None]
        for _ in range(int(rng.integers(1, 4))):
            size = rng.uniform(35, 60)
            cx, cy = rng.uniform(size, side - size), rng.uniform(size * 1.3, side - size * 1.3)
            rx, ry = size * 0.75, size
            skin = np.array([rng.uniform(0.7, 0.95), rng.uniform(0.5, 0.72), rng.uniform(0.4, 0.6)], np.float32)
            hair = rng.uniform(0, 0.4) * np.array([1, 0.8, 0.6], np.float32)

            def paint(mask: np.ndarray, colour: np.ndarray) -> None:
                nonlocal img
                img = img * (1 - mask)[None] + colour[:, None, None] * mask[None]

            paint(_ellipse(yy, xx, cx, cy - ry * 0.35, rx * 1.1, ry * 0.8), hair)
            face = _ellipse(yy, xx, cx, cy, rx, ry)
            paint(face, skin)
            img *= np.where(face > 0, (1 - 0.25 * ((xx - cx) / rx) ** 2).clip(0.6, 1), 1)[None]
            for side_x in (-1, 1):
                ex, ey = cx + side_x * rx * 0.4, cy - ry * 0.15
                paint(_ellipse(yy, xx, ex, ey, rx * 0.18, ry * 0.09), np.full(3, 0.95, np.float32))
                paint(_ellipse(yy, xx, ex, ey, rx * 0.08, ry * 0.08), np.array([0.1, 0.08, 0.05], np.float32))
                paint(_ellipse(yy, xx, ex, cy - ry * 0.33, rx * 0.22, ry * 0.04), hair)
            paint(_ellipse(yy, xx, cx, cy + ry * 0.1, rx * 0.1, ry * 0.18), skin * 0.85)
            paint(_ellipse(yy, xx, cx, cy + ry * 0.5, rx * 0.35, ry * 0.08), np.array([0.7, 0.3, 0.3], np.float32))
        out[i] = np.clip(_blur(img, 2.0), 0, 1)
    return out


# ---- Magika: real files of this machine ---------------------------------------------------------------------------

MAGIKA_BEG = MAGIKA_END = 1024
MAGIKA_BLOCK = 4096
MAGIKA_PAD = 256
# File kinds found on any Python installation (and most Linux hosts), as suffixes.
MAGIKA_SUFFIXES = (".py", ".json", ".so", ".txt", ".png", ".gz", ".pdf", ".html", ".xml", ".sh", ".c", ".h", ".css",
                   ".js", ".md", ".toml", ".csv", ".zip", ".cfg", ".rst", ".pyi", ".ini")


def magika_features(data: bytes) -> np.ndarray:
    """The model input [2048] int32 as Magika 1.0 builds it (``_extract_features_from_bytes``): of the first
    and last ``MAGIKA_BLOCK`` bytes, the first 1024 after ``lstrip()`` padded at the end with 256, then the last
    1024 after ``rstrip()`` padded at the front with 256."""
    block = min(MAGIKA_BLOCK, len(data))
    beg = data[:block].lstrip()[:MAGIKA_BEG]
    end = data[len(data) - block:].rstrip()[-MAGIKA_END:] if block else b""
    features = np.full(MAGIKA_BEG + MAGIKA_END, MAGIKA_PAD, np.int32)
    features[:len(beg)] = np.frombuffer(beg, np.uint8)
    features[MAGIKA_BEG + MAGIKA_END - len(end):] = np.frombuffer(end, np.uint8)
    return features


def _roots() -> list[Path]:
    """Folders every host that runs the tests has: the venv's and the interpreter's libraries, then the system's."""
    import numpy

    roots = [Path(numpy.__file__).parents[1], Path(sys.base_prefix) / "lib", Path(os.__file__).parent,
             Path("/usr/share/doc"), Path("/usr/share"), Path("/usr/lib")]
    seen: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in seen:
            seen.append(root.resolve())
    return seen


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root`` in a deterministic order (sorted names, depth first), links not followed."""
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            yield Path(folder) / name


def local_files(per_suffix: int = 4, min_size: int = 2048, limit: int = 200_000) -> list[Path]:
    """Up to ``per_suffix`` regular files of each of ``MAGIKA_SUFFIXES`` of at least ``min_size`` bytes, found
    under ``_roots()`` (at most ``limit`` paths looked at), in a deterministic order, the suffixes interleaved."""
    found: dict[str, list[Path]] = {s: [] for s in MAGIKA_SUFFIXES}
    looked = 0
    for root in _roots():
        for path in _walk(root):
            looked += 1
            if looked > limit or all(len(v) >= per_suffix for v in found.values()):
                return _interleaved(found)
            bucket = found.get(path.suffix)
            if bucket is None or len(bucket) >= per_suffix or path in bucket or path.is_symlink():
                continue
            try:
                if path.is_file() and path.stat().st_size >= min_size:
                    bucket.append(path)
            except OSError:
                continue
    return _interleaved(found)


def _interleaved(found: dict[str, list[Path]]) -> list[Path]:
    """The first file of each suffix, then the second of each, ...: any leading slice keeps the variety."""
    return [v[i] for i in range(max(map(len, found.values()), default=0)) for v in found.values() if i < len(v)]


def _ends(path: Path) -> bytes:
    """The first and last MAGIKA_BLOCK bytes of the file (all of it when it is shorter than two blocks)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= 2 * MAGIKA_BLOCK:
            return handle.read()
        head = handle.read(MAGIKA_BLOCK)
        handle.seek(size - MAGIKA_BLOCK)
        return head + handle.read(MAGIKA_BLOCK)


def magika_dataset(per_suffix: int = 4) -> tuple[np.ndarray, list[Path]]:
    """Magika inputs [n, 2048] int32 of real files of this machine, and the files."""
    files = local_files(per_suffix)
    return np.stack([magika_features(_ends(p)) for p in files]) if files else np.empty((0, 2048), np.int32), files


# ---- Basic Pitch: synthetic notes -----------------------------------------------------------------------------

PITCH_SR = 22050
PITCH_SAMPLES = 43844  # 2 s at 22050 Hz less one 256 hop: the model's input length


def note_clips(n: int, seed: int = 0) -> np.ndarray:
    """``n`` clips [n, 43844, 1] float32 of synthetic music: 3 to 7 notes each (MIDI 48-84, onsets anywhere in
    the clip, 0.2-0.8 s), each a fundamental with 4 decaying harmonics under an attack-decay envelope, on a
    little white noise; peak 0.8."""
    rng = np.random.default_rng(seed)
    t = np.arange(PITCH_SAMPLES) / PITCH_SR
    out = np.empty((n, PITCH_SAMPLES, 1), np.float32)
    for i in range(n):
        clip = rng.normal(0.0, 0.003, PITCH_SAMPLES)
        for _ in range(int(rng.integers(3, 8))):
            pitch = int(rng.integers(48, 85))
            frequency = 440.0 * 2 ** ((pitch - 69) / 12)
            start, length = rng.uniform(0.0, 1.6), rng.uniform(0.2, 0.8)
            local = t - start
            envelope = np.where((local >= 0) & (local < length),
                                np.minimum(local / 0.01, 1.0) * np.exp(-3.0 * np.clip(local, 0, None)), 0.0)
            tone = sum(0.6 ** (k - 1) * np.sin(2 * np.pi * k * frequency * t) for k in range(1, 6))
            clip += rng.uniform(0.3, 1.0) * envelope * tone
        out[i, :, 0] = 0.8 * clip / np.abs(clip).max()
    return out
