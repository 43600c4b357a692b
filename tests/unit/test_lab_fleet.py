"""Routing cases to the lab's boards and refusing a board whose labgrid tags contradict what was detected on it.

The hosts are this machine's detected ``Host`` with its markers changed (``dataclasses.replace``): the routing is a
pure function of what boards report, and boards of other platforms do not exist here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from certify.cases import cases_for
from certify.hardware import detect_host
from certify.lab.board import Board
from certify.lab.env import place_names
from certify.lab.fleet import Lab, LabBoard, contradiction
from certify.plan import ModelRef
from certify.plan.load import load_plan
from certify.records import split_case_id
from tests.helpers.models import PLAN, candidate, tiny_project

HOST = detect_host()
INTEL = replace(HOST, platforms=("intel",), devices=("cpu",))
JETSON = replace(HOST, platforms=("nvidia", "arm"), devices=("cpu", "gpu"))


def board(name: str, host: object, **kw: object) -> LabBoard:
    return LabBoard(name, Board(name=name, host="10.0.0.1"), host=host, **kw)  # type: ignore[arg-type]


def ref(**kw: object) -> ModelRef:
    return ModelRef(name="c", path=Path("c.onnx"), framework="onnxruntime", **kw)  # type: ignore[arg-type]


def test_tags_that_agree_pass_and_contradictions_show_both() -> None:
    assert contradiction({"platform": "intel", "rack": "3"}, INTEL) == ""
    assert contradiction({"device": "gpu", "platform": "nvidia"}, JETSON) == ""
    why = contradiction({"platform": "arm", "device": "npu"}, INTEL)
    assert "tag platform=arm but detected platforms: intel" in why and "tag device=npu but detected devices: cpu" in why
    assert INTEL.cpu_model in why and "labgrid-client set-tags" in why


def test_a_candidate_goes_to_the_boards_of_its_platform_and_a_portable_one_to_all() -> None:
    lab = Lab([board("nuc", INTEL), board("orin", JETSON), board("bad", INTEL, refused="tags contradict")])
    assert [b.name for b in lab.route(ref(platforms=("intel",)))[0]] == ["nuc"]
    assert [b.name for b in lab.route(ref(platforms=("nvidia",)))[0]] == ["orin"]
    assert [b.name for b in lab.route(ref())[0]] == ["nuc", "orin"]  # a refused board measures nothing
    assert [b.name for b in lab.route(ref(device="gpu"))[0]] == ["orin"]  # the board with a GPU
    assert [b.name for b in lab.route(ref(platforms=("intel",), device="npu"))[0]] == ["nuc"]  # none has one
    none, why = lab.route(ref(platforms=("qualcomm",)))
    assert none == [] and "no board of the lab serves platform qualcomm" in why
    assert "nuc (" in why and "bad (" in why and "REFUSED: tags contradict" in why


def test_each_routed_board_is_a_case_with_its_id_and_markers(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx"))
    plan = load_plan(tmp_path / "certify.toml")
    lab = Lab([board("nuc", INTEL), board("orin", JETSON)])

    def placements(cand: ModelRef) -> list[tuple[str, tuple[str, ...]]]:
        return [(b.name, b.host.platforms if b.host else ()) for b in lab.route(cand)[0]]

    cases = cases_for(plan, "speed", placements)
    assert [c.id for c in cases] == ["tiny/int8@nuc", "tiny/int8@orin"]
    here = cases_for(plan, "speed")[0]
    assert here.id == "tiny/int8" and here.describe()["board"] is None
    orin = cases[1]
    assert split_case_id(orin.id) == ("tiny/int8", "orin") and orin.describe()["board"] == "orin"
    assert orin.markers() == ["cpu", "nvidia", "arm", "onnxruntime"]  # -m nvidia selects what the Jetson measures
    assert len({c.key for c in [*cases, here]}) == 3 and len({c.baseline_key for c in [*cases, here]}) == 3


def test_places_are_read_from_a_target_mapping_or_list() -> None:
    class Config:
        def get_targets(self) -> dict[str, object]:
            return {"a": {"resources": {"RemotePlace": {"name": "lab-a"}}},
                    "b": {"resources": [{"RemotePlace": {"name": "lab-b"}}, {"USBSerialPort": {}}]},
                    "c": {"resources": [{"NetworkService": {"address": "10.0.0.3"}}]}}

    class Env:
        config = Config()

    assert place_names(Env()) == {"a": "lab-a", "b": "lab-b"}
