"""``certify``: demo | run | doctor. ``run`` and ``demo`` run the certification suites through pytest, so
every pytest option (``-m intel``, ``-k``, ``-n 2``, ``--junitxml``) passes through unchanged."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from certify.errors import CertifyError

DEMO_NOTE = ("demo: the plan holds one candidate that is bad on purpose (int8-static-badcalib must FAIL accuracy) "
             "and two that target hardware this host may not have (NOT EVALUATED here).")


def suites_dir() -> Path:
    import certify.suites

    return Path(certify.suites.__file__).parent


def _pytest(plan: Path | None, extra: list[str]) -> int:
    import pytest

    args = [str(suites_dir()), "-p", "no:cacheprovider", "--rootdir", str(Path.cwd()),
            "--certify-report-dir", str(Path.cwd() / "reports"), *extra]
    if plan is not None:
        args += ["--certify-plan", str(plan)]
    return int(pytest.main(args))


def cmd_demo(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.fixtures import demo

    print("certify demo: building the demo models (cached after the first run) ...", flush=True)
    plan = demo.ensure_built()
    code = _pytest(plan, extra)
    print(DEMO_NOTE)
    return 0 if code in (0, 1) else code  # gate failures are the demo's expected output


def cmd_run(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.plan import find_plan

    plan = Path(ns.plan) if ns.plan else find_plan(Path.cwd())
    return _pytest(plan, extra)


def cmd_doctor(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.backends import BACKENDS, registered_names, resolve_backend
    from certify.environment import package_versions
    from certify.hardware import detect_host

    backends = {}
    for name in sorted(set(BACKENDS) | set(registered_names())):
        try:
            resolve_backend(name)
            backends[name] = "available"
        except CertifyError as exc:
            backends[name] = f"unavailable: {exc.diagnostics()}"
    packages = package_versions()
    report = {"host": detect_host().to_dict(), "backends": backends, "packages": packages}
    if ns.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    host = detect_host()
    print(f"host: {host.describe()}\nfingerprint: {host.fingerprint}\ndevices: {', '.join(host.devices)}")
    for name, status in backends.items():
        print(f"backend {name}: {status}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="build the bundled example and certify it (extra args go to pytest)")
    run = sub.add_parser("run", help="run the certification suites on a plan (extra args go to pytest)")
    run.add_argument("--plan", help="plan file (default: ./certify.toml or [tool.certify] in ./pyproject.toml)")
    doctor = sub.add_parser("doctor", help="show the host, its markers and which backends work here")
    doctor.add_argument("--json", action="store_true")
    return parser


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "doctor": cmd_doctor}


def main(argv: list[str] | None = None) -> int:
    ns, extra = build_parser().parse_known_args(argv)
    try:
        return COMMANDS[ns.command](ns, extra)
    except CertifyError as exc:
        print(f"certify: error: {exc.diagnostics()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
