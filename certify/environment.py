"""Versions of everything that shaped a measurement, by distribution name (``llama-cpp-python``, not
``llama_cpp``), read from package metadata without importing the packages."""

from __future__ import annotations

import platform
from importlib import metadata

from certify import DISTRIBUTION, __version__

RECORDED = ("numpy", "pytest", "pytest-xdist", "pytest-benchmark", "onnxruntime", "onnxruntime-gpu",
            "onnxruntime-openvino", "onnx", "openvino", "nncf", "olive-ai", "llama-cpp-python", "mlx", "torch",
            "psutil")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version(), DISTRIBUTION: __version__}
    for name in (*RECORDED, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions

