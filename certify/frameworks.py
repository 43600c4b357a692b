"""The frameworks the harness runs, the one place their names, backend classes and install hints are written.

A framework name is what a plan's ``framework`` says, the marker ``-m`` selects on, and the key of the backend
registry (``certify.backends``); its install hint is what every "unavailable" message tells the user to run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Framework:
    name: str
    backend: str  # "module:Class", imported only when a worker needs it
    install: str  # how to get it
    folder: bool = False  # a plan's path may name a model folder (else it must name a file)
    foreign: tuple[tuple[str, str], ...] = ()  # (file suffix, what to do) for model files it cannot read


GGUF_TO_MLX = ("a .gguf is llama.cpp's format (framework = \"llamacpp\"); mlx-lm does not read it: for MLX convert "
               "the original Hugging Face model folder, python -m mlx_lm convert --hf-path <folder> --mlx-path <out> "
               "(add -q for 4-bit), and name the output folder")


FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework("onnxruntime", "certify.backends.onnxruntime:OnnxRuntimeBackend",
              "pip install 'edge-certify[ort]' (onnxruntime; onnxruntime-gpu for CUDA, onnxruntime-qnn for QNN)"),
    Framework("openvino", "certify.backends.openvino:OpenVinoBackend",
              "pip install 'edge-certify[openvino]' (openvino, nncf)"),
    Framework("olive", "certify.backends.olive:OliveBackend",
              "pip install 'edge-certify[ort]' runs Olive's output (ONNX Runtime, or its build for the targeted "
              "provider); building it from a recipe needs 'edge-certify[olive]' with a CPU torch first "
              "(bash scripts/install.sh olive)"),
    Framework("llamacpp", "certify.backends.llamacpp:LlamaCppBackend",
              "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'edge-certify[llamacpp]'"),
    Framework("mlx", "certify.backends.mlx:MlxBackend",
              "pip install 'edge-certify[mlx]' (mlx[cpu] on Linux: plain mlx has no CPU library there)", folder=True,
              foreign=((".gguf", GGUF_TO_MLX), (".onnx", "an .onnx runs with framework = \"onnxruntime\"; MLX takes a "
                                                           "model folder (mlx_lm convert, or model.json + weights)"))),
    Framework("transformers", "certify.backends.transformers:TransformersBackend",
              "pip install 'edge-certify[transformers]' with a CPU torch first (bash scripts/install.sh transformers)",
              folder=True, foreign=((".gguf", "a .gguf runs with framework = \"llamacpp\""),
                                    (".onnx", "an .onnx runs with framework = \"onnxruntime\" (or an ONNX Runtime "
                                              "GenAI folder with framework = \"ortgenai\")"))),
    Framework("ortgenai", "certify.backends.ortgenai:OrtGenAiBackend",
              "pip install 'edge-certify[ortgenai]' (onnxruntime-genai; onnxruntime-genai-cuda / -directml for GPUs)",
              folder=True, foreign=((".gguf", "a .gguf runs with framework = \"llamacpp\""),)),
    Framework("ovgenai", "certify.backends.ovgenai:OpenVinoGenAiBackend",
              "pip install 'edge-certify[ovgenai]' (openvino-genai, openvino-tokenizers)",
              folder=True, foreign=((".gguf", "a .gguf runs with framework = \"llamacpp\""),)),
)}


def install_hint(name: str) -> str:
    """How to install framework ``name`` (a third party's backend: the package that provides it)."""
    known = FRAMEWORKS.get(name)
    return known.install if known else f"install the package that provides backend {name!r}"
