#!/usr/bin/env bash
# Install edge-certify (editable, from this checkout) with the given extras into the active Python environment:
#   bash scripts/install.sh demo        # the bundled example: ONNX Runtime, OpenVINO + NNCF, Olive
#   bash scripts/install.sh dev         # everything the harness's own tests need
#   bash scripts/install.sh ort,openvino
# Olive (olive-ai) hard-requires torch without pinning it, and plain `pip install torch` takes the newest CUDA
# build (+5.7 GB). So when an extra brings Olive, a CPU torch is installed first:
#   CERTIFY_TORCH        the requirement (default torch==2.13.0)
#   CERTIFY_TORCH_INDEX  an index with CPU builds, e.g. https://download.pytorch.org/whl/cpu (default: pip's own
#                        configuration, which on this project's machines serves the CPU wheel)
# llama-cpp-python compiles from source; CMAKE_ARGS defaults to a portable build (no -march=native), ~7 min on 2 cores.
set -euo pipefail
extras="${1:-demo}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
cd "$(dirname "$0")/.."
case ",$extras," in
  *,olive,*|*,demo,*|*,dev,*|*,transformers,*)
    if [[ -n "${CERTIFY_TORCH_INDEX:-}" ]]; then
      python -m pip install --index-url "$CERTIFY_TORCH_INDEX" --extra-index-url https://pypi.org/simple \
        "${CERTIFY_TORCH:-torch==2.13.0}"
    else
      python -m pip install "${CERTIFY_TORCH:-torch==2.13.0}"
    fi ;;
esac
python -m pip install -e ".[${extras}]"
# The tests export the tiny Hugging Face checkpoint to OpenVINO with optimum-intel, which requires torchvision; the
# torchvision on PyPI is built for the CUDA torch and, beside a CPU torch, breaks every `import transformers`
# ("operator torchvision::nms does not exist"). LLM export does not use torchvision, so install optimum-intel
# without its dependencies (the others come with the dev extra).
case ",$extras," in
  *,dev,*) python -m pip install --no-deps "optimum-intel==2.2.0" "optimum==2.3.0" ;;
esac
