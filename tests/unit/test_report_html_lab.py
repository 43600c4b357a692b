"""The HTML report of a lab run: a Lab section with the boards and the candidate x (board x gate) matrix, next to the
per-case views of 'model/candidate@board'; a local run has no Lab section."""

from __future__ import annotations

from pathlib import Path

from certify.report.html import render_html
from tests.helpers.certificates import board
from tests.helpers.report_run import MODEL, write_lab_run, write_run
from tests.unit.test_report_html import DEV_SIGNED, Document

NUC1 = board("nuc1", "intel", 2)
PI = board("pi", "arm", 3, lost="ssh connection closed after 40 s")
LIAR = board("nuc2", "intel", 4, refused="its detected hardware (arm) contradicts its tags (platform=intel)")
GATES = ["accuracy", "speed", "memory", "stability"]


def lab_report(tmp_path: Path) -> Document:
    results, records = write_lab_run(tmp_path / "lab", [NUC1, PI, LIAR],
                                     {"nuc1": ("int8-dynamic", "int8-static-badcalib"), "pi": ("int8-dynamic",)})
    return Document(render_html(results, records, DEV_SIGNED))


def test_the_lab_table_describes_every_board_and_its_problems(tmp_path: Path) -> None:
    lab = lab_report(tmp_path).one("section", id="lab")
    rows = {tr.attrs["data-board"]: tr for tr in lab.one("table", "boards").find("tr") if "data-board" in tr.attrs}
    assert list(rows) == ["nuc1", "pi", "nuc2"]
    nuc1 = rows["nuc1"].text
    for shown in ("nuc1", "platform=intel", "root@10.213.5.2:2222", "Intel Core i5-1135G7", "markers: intel, cpu",
                  "sha256:nuc1-fing", "onnxruntime 1.23.2, numpy 2.1.0", "0.42 s"):
        assert shown in nuc1
    assert rows["pi"].one("span", data_problem="lost").text == "lost: ssh connection closed after 40 s"
    assert rows["nuc2"].one("span", data_problem="refused").text.startswith("refused: its detected hardware (arm)")
    assert not rows["nuc1"].find("span")


def test_the_board_matrix_has_a_column_group_per_board_and_a_row_per_candidate(tmp_path: Path) -> None:
    matrix = lab_report(tmp_path).one("table", "lab")
    assert [th.text for th in matrix.find("th", "board") if "data-board" in th.attrs] == ["nuc1", "pi", "nuc2"]
    assert [tr.attrs["data-pair"] for tr in matrix.find("tr") if "data-pair" in tr.attrs] == [
        f"{MODEL}/int8-dynamic", f"{MODEL}/int8-static-badcalib"]
    fast = matrix.one("td", "cell", data_case=f"{MODEL}/int8-dynamic@nuc1", data_gate="speed", data_board="nuc1")
    assert fast.attrs["data-verdict"] == "pass" and fast.text == "PASS 4.18x bound 4.1x \u2265 2x"
    lost = matrix.one("td", "cell", data_case=f"{MODEL}/int8-dynamic@pi", data_gate="accuracy")
    assert lost.attrs["data-verdict"] == "error" and lost.attrs["title"] == "board pi was lost: ssh connection closed"
    status = {(td.attrs["data-case"], td.attrs["data-board"]): td.text for td in matrix.find("td", "status")}
    assert status == {(f"{MODEL}/int8-dynamic@nuc1", "nuc1"): "CERTIFIED", (f"{MODEL}/int8-dynamic@pi", "pi"):
                      "NOT CERTIFIED", (f"{MODEL}/int8-static-badcalib@nuc1", "nuc1"): "NOT CERTIFIED"}
    absent = matrix.one("td", data_pair=f"{MODEL}/int8-static-badcalib", data_board="pi")
    assert absent.text == "not measured on pi" and absent.attrs["colspan"] == str(len(GATES) + 1)
    assert len(matrix.find("td", "cell", data_board="nuc2")) == 2  # the refused board measured nothing


def test_per_case_views_still_show_each_board_case(tmp_path: Path) -> None:
    doc = lab_report(tmp_path)
    section = doc.one("section", "candidate", data_case=f"{MODEL}/int8-dynamic@pi")
    assert section.one("h3").text == "int8-dynamic of digits-mlp on board pi"
    overall = doc.one("section", id="matrix")
    assert {td.attrs["data-case"] for td in overall.find("td", "status")} == {
        f"{MODEL}/int8-dynamic@nuc1", f"{MODEL}/int8-dynamic@pi", f"{MODEL}/int8-static-badcalib@nuc1"}
    assert {card.attrs["data-model"] for card in doc.find("div", "pareto")} == {f"{MODEL} on nuc1", f"{MODEL} on pi"}
    assert doc.one("a", href="#lab").text == "Lab"


def test_a_local_run_has_no_lab_section(tmp_path: Path) -> None:
    results, records = write_run(tmp_path / "local")
    doc = Document(render_html(results, records, DEV_SIGNED))
    assert not doc.find("section", id="lab") and not doc.find("table", "lab") and not doc.find("a", href="#lab")
