"""certify.report.html: the self-contained HTML report, rendered from a run folder shaped like a real one
(tests/helpers/report_run.py: a certified, a failed, an errored and a not-evaluated candidate)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from certify.report.html import render_html
from tests.helpers.report_run import ESCAPED, MODEL, NVIDIA_MISSING, write_run

VERIFY = "certify verify run/certificate.json --key run/dev-key.pub --model fixtures/int8.onnx --allow-dev-key"
DEV_SIGNED = {"signed": True, "keyid": "5f0c1a2b3c4d", "dev_key": True, "certificate": "certificate.json",
              "verify_command": VERIFY, "reason_unsigned": None}
KEY_SIGNED = {**DEV_SIGNED, "dev_key": False, "verify_command": VERIFY.replace(" --allow-dev-key", "")}
UNSIGNED = {"signed": False, "keyid": None, "dev_key": False, "certificate": "statement.json",
            "verify_command": None, "reason_unsigned": "no signing key configured: make one with `certify keygen`"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _matches(element: Element, tag: str | None, cls: str | None, attrs: dict[str, str]) -> bool:
    return ((tag is None or element.tag == tag) and (cls is None or cls in element.attrs.get("class", "").split())
            and all(element.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()))


class Element:
    """A parsed element: its attributes, its text content (entities decoded) and the elements inside it."""

    def __init__(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tag, self.attrs = tag, {k: v or "" for k, v in attrs}
        self.parts: list[str] = []
        self.inside: list[Element] = []

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        return [e for e in self.inside if _matches(e, tag, cls, attrs)]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, cls, **attrs)
        assert len(found) == 1, f"expected one {tag}.{cls} {attrs}, found {len(found)}"
        return found[0]


class Document(HTMLParser):
    """The whole page as a root Element, built with the standard library's HTML parser."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", [])
        self.open: list[Element] = [self.root]
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, attrs)
        for parent in self.open:
            parent.inside.append(element)
        if tag not in VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for parent in self.open:
            parent.inside.append(Element(tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        while len(self.open) > 1:
            if self.open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.parts.append(data)

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        return self.root.find(tag, cls, **attrs)

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Element:
        return self.root.one(tag, cls, **attrs)


def render(folder: Path, signature: dict[str, Any] | None = DEV_SIGNED, **run: Any) -> tuple[str, Document]:
    results, records = write_run(folder, **run)
    page = render_html(results, records, signature)
    return page, Document(page)


@pytest.fixture
def report(tmp_path: Path) -> tuple[str, Document]:
    return render(tmp_path / "run")


def case(candidate: str) -> str:
    return f"{MODEL}/{candidate}"


# --- verdict banner --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("only", "complete", "status", "label", "summary"), [
    (None, True, "not_certified", "NOT CERTIFIED", "1 of 4 candidates certified"),
    (("int8-dynamic",), True, "certified", "CERTIFIED", "1 of 1 candidate certified"),
    (("int8-dynamic", "int8-static-qdq-cuda"), True, "incomplete", "INCOMPLETE", "1 of 2 candidates certified"),
    (("int8-dynamic",), False, "incomplete", "INCOMPLETE", "1 of 1 candidate certified"),
])
def test_banner_states_the_overall_verdict(tmp_path: Path, only: tuple[str, ...] | None, complete: bool,
                                           status: str, label: str, summary: str) -> None:
    _, doc = render(tmp_path / "run", only=only, complete=complete)
    banner = doc.one("section", "banner")
    assert banner.has_class(f"s-{status}")
    assert doc.one("div", "verdict").text == label
    assert doc.one("div", "verdict").attrs["data-verdict"] == status
    assert summary in banner.text
    assert ("the run did not complete" in banner.text) is (not complete)


def test_banner_counts_every_verdict(report: tuple[str, Document]) -> None:
    counts = {li.attrs["class"]: li.text for li in report[1].one("ul", "counts").find("li")}
    assert counts == {"v-pass": "10 PASS", "v-fail": "1 FAIL", "v-not_evaluated": "4 NOT EVALUATED",
                      "v-error": "1 ERROR"}


# --- candidate x gate matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("candidate", "gate", "verdict", "texts"), [
    ("int8-dynamic", "accuracy", "pass", ["PASS", "100%", "bound 99.6% \u2265 95%"]),
    ("int8-dynamic", "speed", "pass", ["PASS", "4.18x", "bound 4.1x \u2265 2x"]),
    ("int8-dynamic", "memory", "pass", ["PASS", "62.4%", "bound 62.3% \u2265 50%"]),
    ("int8-dynamic", "stability", "pass", ["PASS", "1.9x", "1.9x \u2264 3x"]),
    ("int8-static-badcalib", "accuracy", "fail", ["FAIL", "84.7%", "bound 81.2% < 95%"]),
    ("int8-static-badcalib", "speed", "pass", ["PASS", "3.91x", "bound 3.8x \u2265 2x"]),
    (ESCAPED, "speed", "pass", ["PASS", "5.62x", "bound 5.41x \u2265 2x"]),
    (ESCAPED, "stability", "error", ["ERROR"]),
    ("int8-static-qdq-cuda", "accuracy", "not_evaluated", ["NOT EVALUATED"]),
    ("int8-static-qdq-cuda", "stability", "not_evaluated", ["NOT EVALUATED"]),
])
def test_matrix_cell_shows_verdict_value_and_decisive_bound(report: tuple[str, Document], candidate: str, gate: str,
                                                            verdict: str, texts: list[str]) -> None:
    cell = report[1].one("td", "cell", data_case=case(candidate), data_gate=gate)
    assert cell.attrs["data-verdict"] == verdict and cell.has_class(f"v-{verdict}")
    assert cell.text == " ".join(texts)


def test_matrix_has_every_case_and_gate_and_each_candidates_verdict(report: tuple[str, Document]) -> None:
    _, doc = report
    cells = doc.find("td", "cell")
    assert len(cells) == 16 and all(c.attrs["data-verdict"] != "absent" for c in cells)
    header = doc.one("table", "matrix").one("thead")
    assert [th.text for th in header.find("th")] == ["Candidate", "accuracy", "speed", "memory", "stability", "Verdict"]
    status = {td.attrs["data-case"]: td.text for td in doc.find("td", "status")}
    assert status == {case("int8-dynamic"): "CERTIFIED", case("int8-static-badcalib"): "NOT CERTIFIED",
                      case(ESCAPED): "NOT CERTIFIED", case("int8-static-qdq-cuda"): "INCOMPLETE"}


# --- Pareto chart ----------------------------------------------------------------------------------------------


def test_pareto_marks_the_dominated_candidate_and_only_it(report: tuple[str, Document]) -> None:
    _, doc = report
    points = {g.attrs["data-candidate"]: g.attrs["class"] for g in doc.find("g", "point")}
    assert points == {"int8-dynamic": "point frontier", "int8-static-badcalib": "point dominated",
                      ESCAPED: "point frontier"}
    labels = [t.text for t in doc.find("text", "dominated-label")]
    assert labels == ["int8-static-badcalib (dominated)"]
    assert all("dominated" not in t.text for t in doc.find("text", "point-label"))
    assert doc.one("g", "dominated").one("circle").attrs["fill"] == "none"
    assert all(g.one("circle").attrs["fill"] != "none" for g in doc.find("g", "frontier"))
    card = doc.one("div", "pareto")
    assert "Not plotted: int8-static-qdq-cuda (no speed or accuracy measurement)" in card.text


# --- self-contained and safe -----------------------------------------------------------------------------------


def test_report_is_self_contained(report: tuple[str, Document]) -> None:
    page, doc = report
    assert "<script" not in page.lower()
    assert doc.one("meta", http_equiv="Content-Security-Policy").attrs["content"] == \
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    for element in doc.root.inside:
        for name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            value = element.attrs.get(name, "").strip().lower()
            assert not value.startswith(("http://", "https://", "//")), f"<{element.tag} {name}={value}>"
    assert not doc.find("link") and not doc.find("img") and not doc.find("iframe")
    assert "url(" not in page and "@import" not in page


def test_candidate_names_are_escaped(report: tuple[str, Document]) -> None:
    page, doc = report
    assert "<b>w4</b>" not in page
    assert html.escape(ESCAPED, quote=False) in page
    assert [h.text for h in doc.find("h3") if "w4" in h.text] == [f"{ESCAPED} of {MODEL}"]
    assert doc.one("section", "candidate", data_case=case(ESCAPED))
    assert ESCAPED in {t.text for t in doc.find("text", "point-label")}


# --- signature -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signature", "state", "warned"), [
    (DEV_SIGNED, "signed", True), (KEY_SIGNED, "signed", False), (UNSIGNED, "unsigned", False),
    (None, "unknown", False),
])
def test_dev_key_warning_only_for_dev_keys(tmp_path: Path, signature: dict[str, Any] | None, state: str,
                                          warned: bool) -> None:
    page, doc = render(tmp_path / "run", signature)
    card = doc.one("div", "signature")
    assert card.attrs["data-state"] == state
    assert bool(doc.find("div", "dev-key-warning")) is warned
    assert ("throwaway development key" in page) is warned
    if state == "signed":
        assert signature is not None
        assert doc.one("pre", "verify-command").text == signature["verify_command"]
        assert signature["keyid"] in card.text and "certificate.json" in card.text
    else:
        assert not doc.find("pre")
    if state == "unsigned":
        assert "no signing key configured: make one with `certify keygen`" in card.text


# --- the other sections ----------------------------------------------------------------------------------------


def test_candidate_sections_show_figures_charts_and_hints(report: tuple[str, Document]) -> None:
    _, doc = report
    sections = {s.attrs["data-case"]: s for s in doc.find("section", "candidate")}
    assert list(sections) == sorted(sections)
    badcalib = sections[case("int8-static-badcalib")].text
    assert "Accuracy retention 84.7% CI 81.2% \u2013 88.0% required \u2265 95%" in badcalib
    assert "Hint: calibrate static quantization on more, representative data" in badcalib
    assert "Speedup 3.91x CI 3.8x \u2013 4.02x required \u2265 2x" in badcalib
    assert "policy limit 19.8 MiB" in badcalib and "14.9 MiB (-62.3%)" in badcalib
    crashed = sections[case(ESCAPED)].text
    assert "measurement worker died with signal 11" in crashed and "Hint: run the candidate alone" in crashed
    cuda = sections[case("int8-static-qdq-cuda")]
    rows = cuda.one("table", "gates").find("tr")
    assert [r.attrs["data-gate"] for r in rows] == ["accuracy speed memory stability"]
    assert rows[0].text == f"accuracy, speed, memory, stability NOT EVALUATED {NVIDIA_MISSING}"
    assert "Latency distribution" not in cuda.text and "Accuracy retention" not in cuda.text


def test_speed_facts_say_how_the_interval_was_found_how_noisy_the_host_was_and_why_no_energy(
        report: tuple[str, Document]) -> None:
    text = report[1].one("section", "candidate", data_case=case("int8-dynamic")).text
    assert "interval the wider of a paired block bootstrap and a t interval over 8 consecutive windows' speedups: " \
           "bootstrap 4.12x \u2013 4.24x, windows 4.1x \u2013 4.26x" in text
    assert "host noise noisy (others busy 0.6 cores; load average 1.20 on 2 cores); run widened: min_duration_s " \
           "2 -> 8" in text
    assert "energy not available: no energy counter readable here: RAPL: no powercap" in text
    measured = report[1].one("section", "candidate", data_case=case(ESCAPED)).text
    assert "energy 0.00121 -> 0.00031 J per inference (rapl:package-0)" in measured


def test_latency_chart_uses_the_latest_speed_record(report: tuple[str, Document]) -> None:
    section = report[1].one("section", "candidate", data_case=case("int8-dynamic"))
    rows = [g.find("text")[0].text for g in section.find("g", "latency-row")]
    assert [r.split(":")[0] for r in rows] == ["baseline", "candidate"]
    assert all(r.endswith("\u00b7 600 samples") for r in rows), rows  # the stale record had 1 sample each


def test_not_evaluated_section_says_why_once_per_reason(report: tuple[str, Document]) -> None:
    _, doc = report
    table = doc.one("table", "not-evaluated")
    assert [tr.text for tr in table.one("tbody").find("tr")] == \
        [f"{case('int8-static-qdq-cuda')} accuracy, speed, memory, stability {NVIDIA_MISSING}"]
    assert "measurement worker died with signal 11" in doc.one("table", "errors").text


def test_optimization_stages_only_when_a_case_carries_a_recipe(tmp_path: Path) -> None:
    _, without = render(tmp_path / "a")
    assert not without.find("section", id="stages") and "Optimization stages" not in without.one("nav").text
    _, with_recipe = render(tmp_path / "b", recipes=True)
    rows = [tr.text for tr in with_recipe.one("table", "stages").one("tbody").find("tr")]
    assert rows[1].startswith(f'{case("int8-dynamic")} quantization onnxruntime quantize_dynamic from baseline'
                              ' {"per_channel": true}')
    assert "100.0% (PASS)" in rows[1] and "x (PASS)" in rows[1] and "MiB" in rows[1]  # what the step bought
    assert len(rows) == 4


def test_environment_records_host_packages_plan_policy_and_utc_times(report: tuple[str, Document]) -> None:
    _, doc = report
    env = doc.one("section", id="environment").text
    for expected in ("sha256:40a3eb1216c35b03ffd3835f9558f796", "onnxruntime 1.31.1", "AMD EPYC", "23.5 GiB",
                     "digits-demo", "/tmp/certify-cache/demo/plan.toml",
                     "sha256:94f1fde6061c7fd3a20d0071a2ddd640205469b6a8b1cf923d5cdd6345cddfdf",
                     "edge-default", "sha256:1a2e4f8e5f737d6c329c587d1b5a6d55fe34c14b1981e84e45ebb925077d6c4d",
                     "min_speedup 2x", "min_accuracy_retention 95%", "decision lower_bound",
                     "20261121T071120Z-f59870", "Started (UTC) 2026-11-21T07:11:20Z",
                     "Finished (UTC) 2026-11-21T07:12:15Z (55.1 s)", "baseline fp32 onnxruntime on cpu"):
        assert expected in env, expected
    assert re.search(r"candidate int8-dynamic onnxruntime on cpu [0-9a-f]{64}", env)


def test_report_renders_without_evidence_or_cases(tmp_path: Path) -> None:
    results, _ = write_run(tmp_path / "run", only=())
    page = render_html({**results, "host": {}, "packages": {}}, [], None)
    doc = Document(page)
    assert doc.one("div", "verdict").text == "INCOMPLETE"
    assert "No case was recorded in this run." in page and "No candidate to compare." in page
