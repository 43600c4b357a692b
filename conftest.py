"""Repository-level pytest setup. The certification plugin itself arrives through the ``pytest11`` entry point
(installed with the package), so this file holds only what this repository's own test runs need."""

collect_ignore = ["reports"]
