"""Versions of everything that shaped a measurement, by distribution name (``llama-cpp-python``, not
``llama_cpp``), read from package metadata without importing the packages."""

from __future__ import annotations

import platform
import re
from importlib import metadata

from certify import DISTRIBUTION, __version__

KEY_PACKAGES = ("numpy", "pytest", "pytest-xdist", "pytest-benchmark", "onnxruntime", "onnxruntime-gpu",
                "onnxruntime-openvino", "onnx", "openvino", "nncf", "olive-ai", "llama-cpp-python", "mlx", "mlx-lm",
                "onnxruntime-genai", "openvino-genai", "openvino-tokenizers", "transformers", "torch", "psutil")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_versions(*, everything: bool = True) -> dict[str, str]:
    """Python, this harness, the frameworks that measure, then (``everything``) every other installed
    distribution, so a certificate says exactly what software produced it."""
    installed = {_normal(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    versions = {"python": platform.python_version(), DISTRIBUTION: __version__}
    versions |= {name: installed[name] for name in KEY_PACKAGES if name in installed}
    if everything:
        versions |= {name: installed[name] for name in sorted(installed) if name not in versions}
    return versions
