"""``certify``: demo | run | doctor | keygen | verify | report | compare | merge | digest.

``run`` and ``demo`` run the certification suites through pytest, so every pytest option (``-m intel``, ``-k``,
``-n 2``, ``--junitxml``, ``--alluredir``) passes through unchanged. ``verify`` is the release gate: exit 0 only
when the certificate is trusted and everything required of it holds; 1 when it is refused; 2 on a usage error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from certify.errors import CertifyError
from certify.gates.registry import GATE_NAMES

DEMO_NOTE = ("demo: the plan holds one candidate that is bad on purpose (int8-static-badcalib must FAIL accuracy), "
             "two that target hardware this host may not have (NOT EVALUATED here), and OpenVINO candidates whose "
             "speed or memory gates may fail honestly on this CPU (see the README).")


def suites_dir() -> Path:
    import certify.suites

    return Path(certify.suites.__file__).parent


def _pytest(plan: Path | None, extra: list[str]) -> int:
    """``pytest PLAN`` (the plan file collected as tests, as plain ``pytest`` in the project does), reports under
    ./reports; without a plan, the embedded demo's."""
    import pytest

    if plan is None:
        from certify.fixtures import demo

        plan = demo.ensure_built()
    rootdir = Path.cwd() if plan.resolve().is_relative_to(Path.cwd().resolve()) else plan.resolve().parent
    args = [str(plan), "-p", "no:cacheprovider", "--rootdir", str(rootdir),
            "--certify-report-dir", str(Path.cwd() / "reports"), "--certify-plan", str(plan), *extra]
    return int(pytest.main(args))


def cmd_demo(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.fixtures import demo

    print("certify demo: building the demo models (cached after the first run) ...", flush=True)
    plan = demo.ensure_built()
    if not any(a.startswith("--certify-sign-key") for a in extra) and not _key_in_environment():
        extra = [*extra, "--certify-dev-key"]
        print("certify demo: no signing key configured, so a throwaway development key signs the certificate "
              "(the report says so; certify verify refuses it without --allow-dev-key)", flush=True)
    code = _pytest(plan, extra)
    print(DEMO_NOTE)
    return 0 if code in (0, 1) else code  # gate failures are the demo's expected output


def _key_in_environment() -> bool:
    import os

    from certify.attest import KEY_ENV, KEY_FILE_ENV

    return bool(os.environ.get(KEY_ENV) or os.environ.get(KEY_FILE_ENV))


def cmd_run(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.plan.load import find_plan

    plan = Path(ns.plan) if ns.plan else find_plan(Path.cwd())
    return _pytest(plan, extra)


def cmd_doctor(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.backends import registered_names, resolve_backend
    from certify.environment import package_versions
    from certify.frameworks import FRAMEWORKS
    from certify.hardware import detect_host

    backends = {}
    for name in sorted(set(FRAMEWORKS) | set(registered_names())):
        try:
            resolve_backend(name)
            backends[name] = "available"
        except CertifyError as exc:
            backends[name] = f"unavailable: {exc.diagnostics()}"
    packages = package_versions(everything=False)
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


def cmd_keygen(ns: argparse.Namespace, extra: list[str]) -> int:
    import os

    from certify.attest import PASSPHRASE_ENV, generate_keypair

    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode() if ns.encrypt else None
    if ns.encrypt and not passphrase:
        raise CertifyError(f"--encrypt needs the passphrase in ${PASSPHRASE_ENV}", hint="export it, then re-run")
    private, public, keyid = generate_keypair(Path(ns.out), passphrase)
    print(f"private key: {private} (mode 0600; keep it secret, e.g. as a CI secret: CERTIFY_SIGNING_KEY)")
    print(f"public key:  {public} (give it to verifiers: certify verify CERT --key {public})")
    print(f"key id:      {keyid}")
    return 0


def cmd_verify(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.verify import DEFAULT_MAX_AGE_DAYS, Request, verify

    max_age = getattr(ns, "max_age", DEFAULT_MAX_AGE_DAYS)  # absent: the default; None: --max-age none
    req = Request(Path(ns.certificate), [Path(k) for k in ns.key], [Path(m) for m in ns.model], ns.policy,
                  ns.require, max_age, ns.allow_dev_key, ns.allow_noisy, host_markers=ns.host_marker,
                  boards=ns.board)
    outcome = verify(req)
    if ns.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        for check in outcome.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        refused = [c for c in outcome.checks if not c.ok]
        print("VERIFIED" if outcome.ok else f"REFUSED ({len(refused)} reason{'s' * (len(refused) != 1)})")
    return 0 if outcome.ok else 1


def cmd_report(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.report.publish import HTML_FILE, SUMMARY_FILE, rerender

    run_dir = Path(ns.run_dir)
    signature = rerender(run_dir)
    failed = signature.get("render_errors") or {}
    for label, name in (("report", HTML_FILE), ("summary", SUMMARY_FILE)):
        print(f"{label}: {run_dir / name}" if name not in failed else f"{label}: not rendered: {failed[name]}")
    print("signed by key " + str(signature["keyid"]) if signature["signed"] else
          f"not signed: {signature['reason_unsigned']}")
    return 1 if failed else 0


def cmd_digest(ns: argparse.Namespace, extra: list[str]) -> int:
    """``sha256:<hex>  PATH`` per model: the digest a plan pins (``sha256``) and a certificate names (a manifest of
    the files for a multi-file model: an IR's .xml and .bin, an ONNX model with external data, a folder)."""
    from certify.digests import model_digest

    code = 0
    for model in ns.models:
        try:
            digest = model_digest(Path(model))
        except CertifyError as exc:
            print(f"certify: error: {exc.diagnostics()}", file=sys.stderr)
            code = 2
            continue
        print(f"sha256:{digest.sha256}  {model}")
        if ns.files and len(digest.files) > 1:
            for path, sha in digest.files:
                print(f"  {sha}  {path}")
    return code


def _emit(result: Any, ns: argparse.Namespace) -> None:
    """Print a comparison or fleet as text (default), JSON, or Markdown; also write Markdown to a file if asked."""
    if ns.markdown:
        Path(ns.markdown).write_text(result.markdown(), encoding="utf-8")
    if ns.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print("\n".join(result.lines()))


def cmd_compare(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.report.compare import compare

    comparison = compare(Path(ns.old), Path(ns.new), [Path(k) for k in ns.key], tolerance=ns.tolerance)
    _emit(comparison, ns)
    return 1 if comparison.regressions else 0


def cmd_merge(ns: argparse.Namespace, extra: list[str]) -> int:
    from certify.report.fleet import merge

    _emit(merge([Path(c) for c in ns.certificates], [Path(k) for k in ns.key]), ns)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="build the bundled example and certify it (extra args go to pytest)")
    run = sub.add_parser("run", help="run the certification suites on a plan (extra args go to pytest)")
    run.add_argument("--plan", help="plan file (default: ./certify.toml or [tool.certify] in ./pyproject.toml)")
    doctor = sub.add_parser("doctor", help="show the host, its markers and which backends work here")
    doctor.add_argument("--json", action="store_true")
    keygen = sub.add_parser("keygen", help="make an Ed25519 signing key pair (KEY and KEY.pub)")
    keygen.add_argument("--out", required=True, metavar="KEY", help="private key path; the public key is KEY.pub")
    keygen.add_argument("--encrypt", action="store_true",
                        help="encrypt the private key with the passphrase in $CERTIFY_SIGNING_KEY_PASSPHRASE")
    _verify_parser(sub)
    report = sub.add_parser("report", help="re-render a run's HTML report and Markdown summary from its evidence")
    report.add_argument("run_dir", metavar="RUN_DIR")
    _fleet_parsers(sub)
    digest = sub.add_parser("digest", help="print a model's digest, as a plan pins it (sha256 = '<hex>')")
    digest.add_argument("models", nargs="+", metavar="MODEL", help="model file (.onnx, .xml, .gguf) or folder")
    digest.add_argument("--files", action="store_true", help="also list each file of a multi-file model")
    return parser


def _fleet_parsers(sub: Any) -> None:
    compare = sub.add_parser("compare", help="regressions between two certificates (exit 1 when a gate got worse)")
    compare.add_argument("old", metavar="OLD")
    compare.add_argument("new", metavar="NEW")
    compare.add_argument("--tolerance", type=float, default=0.25, metavar="FRACTION",
                         help="relative change that counts for values without an interval (default 0.25)")
    merge = sub.add_parser("merge", help="one fleet matrix (candidate x hardware x gate) from several certificates")
    merge.add_argument("certificates", nargs="+", metavar="CERT")
    for parser in (compare, merge):
        parser.add_argument("--key", action="append", default=[], metavar="PUB",
                            help="trusted public key (repeatable); without one, signatures are not checked")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--markdown", metavar="FILE", help="also write the result as Markdown to FILE")


def _verify_parser(sub: Any) -> None:
    def max_age(text: str) -> float | None:
        if text.lower() == "none":
            return None
        try:
            days = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of days or 'none'") from None
        if not days > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: the max age must be positive days (or 'none')")
        return days

    verify = sub.add_parser("verify", help="the release gate: exit 0 only when the certificate can be trusted",
                            description="Exit 0 only when the certificate is trusted and everything required of it "
                            "holds, 1 when it is refused, 2 on a usage error. By default: the signature, a complete "
                            "run no older than 30 days and not from the future, each candidate's policy at least as "
                            "strict as the built-in policy of its name, every verdict following from its recorded "
                            "figures and policy, subjects that are the certified candidates with their digests, "
                            "required gates passed and not measured on a too-noisy host.")
    verify.add_argument("certificate", metavar="CERT")
    verify.add_argument("--key", action="append", required=True, metavar="PUB", help="trusted public key (repeatable)")
    verify.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="a model file being released: its digest must be a certified subject (repeatable)")
    verify.add_argument("--host-marker", action="append", default=[], metavar="MARKER",
                        help="only candidates measured on a board (or, without a lab, a host) whose detected platform "
                        "markers or devices include MARKER, e.g. intel, arm, gpu (repeatable: every one); none left "
                        "is a refusal")
    verify.add_argument("--board", action="append", default=[], metavar="NAME",
                        help="only candidates measured on this board of the lab (repeatable: any of them); none left "
                        "is a refusal; a board the lab refused is never accepted")
    verify.add_argument("--policy", metavar="NAME|FILE",
                        help="the certificate's policy must be at least this strict (default: the built-in policy "
                        "of the name it records; a custom policy is accepted only through this option)")
    verify.add_argument("--require", action="append", metavar="GATE",
                        help=f"gates that must have passed (repeatable; built in: {', '.join(GATE_NAMES)}, or a "
                        "gate a project added; default: the gates the certificate's policy requires, all eight "
                        "for edge-default)")
    verify.add_argument("--max-age", type=max_age, default=argparse.SUPPRESS, metavar="DAYS|none",
                        help="refuse certificates older than this many days (default: 30; 'none': any age, "
                        "though one finished in the future is still refused)")
    verify.add_argument("--allow-dev-key", action="store_true",
                        help="accept a certificate signed with a throwaway development key (demos only)")
    verify.add_argument("--allow-noisy", action="store_true",
                        help="accept required gates measured while the host was too noisy to judge them")
    verify.add_argument("--json", action="store_true")


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "doctor": cmd_doctor, "keygen": cmd_keygen, "verify": cmd_verify,
            "report": cmd_report, "compare": cmd_compare, "merge": cmd_merge, "digest": cmd_digest}


def main(argv: list[str] | None = None) -> int:
    ns, extra = build_parser().parse_known_args(argv)
    try:
        return COMMANDS[ns.command](ns, extra)
    except CertifyError as exc:
        print(f"certify: error: {exc.diagnostics()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
