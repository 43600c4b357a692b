"""Production-readiness gates beyond accuracy, speed and memory: ``stress``, ``fallback``, ``robustness`` and
``security``. Each module exposes ``evaluate(run, case, measurement) -> GateResult`` (``run`` is the
``certify.runner.CertificationRun``; ``measurement`` is filled with the evidence) and is imported only when its gate
runs. What runs inside a measurement worker lives next to it and is reached through the worker's ``cmd_*``."""
