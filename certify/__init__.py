"""edge-certify: a pytest-based certification harness for optimized edge-AI models."""

__version__ = "0.1.0"
DISTRIBUTION = "edge-certify"
