"""ORT quantization recipes on graphs as real exporters write them: weights held by Constant nodes (folded into
initializers by ``preprocess``), compute inside If subgraphs (which ORT 1.32's quantizers enter only in dynamic mode
with EnableSubgraph), and quantizer failures reported with ORT's own message and a hint. Every build runs the way
the harness runs it: a plan, ``materialize``, the build child; and a build that quantized nothing is an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.errors import PlanError
from certify.plan import ModelPlan
from certify.plan.load import load_plan
from certify.recipes import RecipeError
from certify.recipes.build import materialize
from certify.recipes.ort import candidate_nodes, fold_constants, quantization_facts
from tests.helpers.models import PLAN

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def cache(recipe_cache: Path) -> Path:
    return recipe_cache


# --- graphs ----------------------------------------------------------------------------------------------------

def weight(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def constant(name: str, value: np.ndarray) -> Any:
    """A Constant node holding a weight, as PaddlePaddle's and some PyTorch exports write them."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name), name=f"{name}_const")


def save(path: Path, nodes: list[Any], x_shape: list[int | str], inits: tuple[Any, ...] = (),
         extra_inputs: tuple[Any, ...] = (), value_info: tuple[Any, ...] = (), domains: tuple[str, ...] = ()) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                                          *extra_inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits),
                              value_info=list(value_info))
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def constant_matmul(path: Path) -> Path:
    """x @ W with W a Constant node."""
    return save(path, [constant("W", weight(16, 4)), helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                ["batch", 16])


def constant_conv(path: Path) -> Path:
    """A Conv with bias whose weight is a Constant node, named as in the PaddleOCR-derived model that made
    quantize_dynamic raise 'Expected conv2d_394.w_0 to be an initializer'."""
    return save(path, [constant("conv2d_394.w_0", weight(4, 3, 3, 3)), constant("conv2d_394.b_0", weight(4)),
                       helper.make_node("Conv", ["x", "conv2d_394.w_0", "conv2d_394.b_0"], ["y"], name="conv")],
                [1, 3, 8, 8])


def branch(name: str, const: bool) -> Any:
    """An If branch computing x @ W_<name>, its weight an initializer of the branch or a Constant node in it."""
    w = weight(16, 4)
    nodes = [helper.make_node("MatMul", ["x", f"W_{name}"], [f"{name}_y"], name=f"{name}_mm")]
    if const:
        nodes.insert(0, constant(f"W_{name}", w))
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
                             [] if const else [numpy_helper.from_array(w, f"W_{name}")])


def if_matmul(path: Path, const: bool = False) -> Path:
    """y = x @ W1 if sum(x) > 0 else x @ W2: the model's only MatMuls sit inside If branches."""
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch("then", const), else_branch=branch("else", const),
                              name="if")]
    return save(path, nodes, [1, 16], (numpy_helper.from_array(np.array(0, np.float32), "zero"),))


# --- a project around one graph ----------------------------------------------------------------------------------

def project(folder: Path, build: Any, *recipes: str, **kwargs: Any) -> ModelPlan:
    """A plan whose baseline is the graph ``build`` writes, with calibration data of its input shape and one
    candidate per recipe (named c0, c1, ...)."""
    model = build(folder / "fp32.onnx", **kwargs)
    dims = onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value or 1 for d in dims]
    np.savez(folder / "data.npz", x=RNG.standard_normal((8, *shape[1:])).astype(np.float32), y=np.zeros(8, np.int64))
    candidates = "".join(f'\n[[models.candidates]]\nname = "c{i}"\nframework = "onnxruntime"\nrecipe = {r}\n'
                         for i, r in enumerate(recipes))
    (folder / "certify.toml").write_text(PLAN + candidates)
    return load_plan(folder / "certify.toml").models[0]


def built(model: ModelPlan, index: int = 0) -> tuple[Path, dict[str, Any]]:
    """Build candidate ``index`` as the harness does; its model and the facts the recipe recorded."""
    path = materialize(model, model.candidates[index], max_drop=0.05).file
    return path, quantization_facts(path)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


DYNAMIC = '{ tool = "onnxruntime", method = "quantize_dynamic"%s }'
STATIC = '{ tool = "onnxruntime", method = "quantize_static", samples = 4%s }'


# --- (a) Constant-node weights ----------------------------------------------------------------------------------

def test_a_constant_node_weight_is_quantized_after_preprocessing(tmp_path: Path) -> None:
    model = project(tmp_path, constant_matmul, DYNAMIC % "", DYNAMIC % ", preprocess = false")
    path, facts = built(model)
    assert facts["quantized_nodes"] == 1 and facts["quantized_ops"] == {"MatMulInteger": 1}
    assert facts["preprocess"]["requested"] and facts["preprocess"]["quant_pre_process"] == "ran"
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    assert np.allclose(run(path, x), run(tmp_path / "fp32.onnx", x), atol=0.1)
    # the same graph as it is: ORT leaves a MatMul whose weight is not an initializer in float, silently
    with pytest.raises(RecipeError, match=r"quantized no node of fp32.onnx \(1 candidate nodes\)") as err:
        built(model, 1)
    assert "preprocess = true" in err.value.hint


def test_a_constant_conv_weight_fails_without_folding_and_builds_with_it(tmp_path: Path) -> None:
    model = project(tmp_path, constant_conv, DYNAMIC % ", preprocess = false", DYNAMIC % "")
    with pytest.raises(RecipeError, match=r"quantize_dynamic failed on fp32.onnx: ValueError: Expected "
                                          r"conv2d_394.w_0 to be an initializer") as err:
        built(model)
    assert "preprocess = true" in err.value.hint and "Constant" in err.value.hint
    _, facts = built(model, 1)
    assert facts["summary"] == "quantized 1 of 1 candidate nodes" and facts["quantized_ops"] == {"ConvInteger": 1}


def custom_op_matmul(path: Path) -> Path:
    """A Constant weight behind an op ORT cannot load: quant_pre_process's symbolic shape inference refuses the
    model and its graph optimization (which would fold the Constant) fails; only the recipe's folding is left."""
    foo = helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 16])
    return save(path, [helper.make_node("Foo", ["x"], ["f"], domain="custom.x", name="foo"),
                       constant("W", weight(16, 4)), helper.make_node("MatMul", ["f", "W"], ["y"], name="mm")],
                ["batch", 16], value_info=(foo,), domains=("custom.x",))


def test_failed_pre_processing_is_recorded_and_folding_still_makes_the_weight_quantizable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the build child's working directory
    _, facts = built(project(tmp_path, custom_op_matmul, DYNAMIC % ""))
    assert not (tmp_path / "sym_shape_infer_temp.onnx").exists()  # ORT's debris stays in the build folder
    pre = facts["preprocess"]
    assert pre["quant_pre_process"] == "ran without symbolic shape inference and ORT graph optimization"
    assert any("Incomplete symbolic shape inference" in e for e in pre["errors"])
    assert any("custom.x:Foo" in e for e in pre["errors"])
    assert pre["folded_constants"] == 1 and facts["quantized_nodes"] == 1


def test_fold_constants_reaches_subgraphs_and_keeps_graph_outputs() -> None:
    graph = helper.make_graph(
        [constant("y", weight(2)), helper.make_node("If", ["c"], ["z"], then_branch=branch("then", True),
                                                     else_branch=branch("else", True))],
        "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    assert fold_constants(graph) == 2  # one per branch; the Constant that is a graph output stays
    assert [n.op_type for n in graph.node] == ["Constant", "If"]
    branches = {a.name: a.g for a in graph.node[1].attribute}
    assert {k: [i.name for i in g.initializer] for k, g in branches.items()} == {
        "then_branch": ["W_then"], "else_branch": ["W_else"]}
    assert all(n.op_type == "MatMul" for g in branches.values() for n in g.node)


# --- (b) compute inside If subgraphs -----------------------------------------------------------------------------

def test_a_model_whose_matmuls_sit_in_if_branches_is_refused_not_certified_as_int8(tmp_path: Path) -> None:
    """ORT 1.32: quantize_dynamic and quantize_static (QDQ) leave If branches untouched and say nothing."""
    model = project(tmp_path, if_matmul, DYNAMIC % "", STATIC % "")
    with pytest.raises(RecipeError, match=r"quantized no node of fp32.onnx \(2 candidate nodes; 2 inside If "
                                          r"subgraphs, which quantize_dynamic enters only with subgraphs = true\)"
                       ) as err:
        built(model)
    assert "subgraphs = true" in err.value.hint and "nncf" in err.value.hint
    with pytest.raises(RecipeError, match=r"2 inside If subgraphs, which quantize_static does not enter") as err:
        built(model, 1)
    assert "quantize_dynamic method with subgraphs = true" in err.value.hint


@pytest.mark.parametrize("const", [False, True])
def test_subgraphs_true_quantizes_inside_if_branches(tmp_path: Path, const: bool) -> None:
    """With EnableSubgraph ORT quantizes branch MatMuls; a Constant weight in a branch (which quant_pre_process
    does not fold) is quantized only because the recipe folds it."""
    path, facts = built(project(tmp_path, if_matmul, DYNAMIC % ", subgraphs = true", const=const))
    assert facts["quantized_nodes"] == 2 and facts["candidate_nodes_in_subgraphs"] == 2 and facts["subgraphs"]
    assert facts["preprocess"]["folded_constants"] == (2 if const else 0)
    x = RNG.standard_normal((1, 16)).astype(np.float32)
    assert np.allclose(run(path, x), run(tmp_path / "fp32.onnx", x), atol=0.1)


# --- (c) the count is recorded -------------------------------------------------------------------------------------

def matmul_and_gemm(path: Path) -> Path:
    """A MatMul then a Gemm (which quantize_dynamic rewrites into MatMul + Add before quantizing)."""
    return save(path, [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm"),
                       helper.make_node("Gemm", ["h", "W2", "B2"], ["y"], name="gemm")],
                [1, 16], (numpy_helper.from_array(weight(16, 8), "W1"), numpy_helper.from_array(weight(8, 4), "W2"),
                          numpy_helper.from_array(weight(4), "B2")))


def test_the_count_of_quantized_nodes_is_recorded_next_to_the_model(tmp_path: Path) -> None:
    model = project(tmp_path, matmul_and_gemm, DYNAMIC % "", STATIC % ', nodes_to_exclude = ["gemm"]',
                    DYNAMIC % ', op_types_to_quantize = ["Conv"]')
    _, dynamic = built(model)
    assert dynamic["summary"] == "quantized 2 of 2 candidate nodes"
    assert dynamic["candidate_ops"] == {"MatMul": 1, "Gemm": 1} and dynamic["quantized_ops"] == {"MatMulInteger": 2}
    assert dynamic["tool"] == "onnxruntime" and dynamic["method"] == "quantize_dynamic"
    assert dynamic["candidate_nodes"] == 2 and dynamic["candidate_nodes_in_subgraphs"] == 0
    _, static = built(model, 1)  # QDQ: a quantized node keeps its op type and reads DequantizeLinear outputs
    assert static["summary"] == "quantized 1 of 2 candidate nodes" and static["quantized_ops"] == {"MatMul": 1}
    assert static["nodes_to_exclude"] == ["gemm"]
    with pytest.raises(RecipeError, match="quantized no node") as err:
        built(model, 2)
    assert "op_types_to_quantize = ['Conv'] limits" in err.value.hint


def lstm(path: Path) -> Path:
    """One LSTM layer: quantize_dynamic quantizes it (DynamicQuantizeLSTM), ORT's QDQ quantizer has no LSTM."""
    hidden = 4
    return save(path, [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hidden, name="lstm")],
                ["seq", 1, 16], (numpy_helper.from_array(weight(1, 4 * hidden, 16), "W"),
                                 numpy_helper.from_array(weight(1, 4 * hidden, hidden), "R")))


def test_an_op_the_method_cannot_quantize_points_to_the_other_method(tmp_path: Path) -> None:
    model = project(tmp_path, lstm, STATIC % "", DYNAMIC % "")
    with pytest.raises(RecipeError, match=r"quantized no node of fp32.onnx \(1 candidate nodes\)") as err:
        built(model)
    assert "quantize_static does not quantize LSTM: try the quantize_dynamic method" in err.value.hint
    _, facts = built(model, 1)
    assert facts["quantized_ops"] == {"DynamicQuantizeLSTM": 1}


def test_candidate_nodes_count_subgraphs_by_owner(tmp_path: Path) -> None:
    ops, inside = candidate_nodes(onnx.load(str(if_matmul(tmp_path / "m.onnx"))).graph)
    assert ops == {"MatMul": 2} and inside == {"If": 2}


# --- (d) the tool's own error, with a hint -----------------------------------------------------------------------

def computed_conv_weight(path: Path) -> Path:
    """A Conv whose weight is a graph input (computed at run time): no pre-processing can make it an initializer."""
    return save(path, [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv"),
                       helper.make_node("Flatten", ["c"], ["f"]),
                       helper.make_node("MatMul", ["f", "W2"], ["y"], name="mm")],
                [1, 3, 8, 8], (numpy_helper.from_array(weight(4), "B"), numpy_helper.from_array(weight(144, 2), "W2")),
                extra_inputs=(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3]),))


def test_a_quantizer_failure_names_the_tools_error_and_what_to_try(tmp_path: Path) -> None:
    model = project(tmp_path, computed_conv_weight, DYNAMIC % "", DYNAMIC % ', nodes_to_exclude = ["conv"]')
    with pytest.raises(RecipeError, match=r"onnxruntime quantize_dynamic failed on fp32.onnx: ValueError: Expected W "
                                          r"to be an initializer") as err:
        built(model)
    assert "nodes_to_exclude = ['conv']" in err.value.hint and "op_types_to_quantize" in err.value.hint
    _, facts = built(model, 1)
    assert facts["summary"] == "quantized 1 of 2 candidate nodes"


@pytest.mark.parametrize(("params", "message"), [
    (', op_types_to_quantize = ["Matmul"]', "does not quantize 'Matmul' (did you mean 'MatMul'?)"),
    (', nodes_to_exclude = ["mmm"]', "no node named 'mmm' (did you mean 'mm'?)"),
    (', op_types_to_quantize = ["Gemm"]', "turns every Gemm into MatMul"),
])
def test_a_selection_that_names_nothing_is_an_error_not_ignored(tmp_path: Path, params: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        built(project(tmp_path, constant_matmul, DYNAMIC % params))


@pytest.mark.parametrize(("params", "message"), [
    (', op_types_to_quantize = "MatMul"', "expected list[str]"),
    (", nodes_to_exclude = [1]", "expected list[str]"),
    (", subgraphs = 1", "expected bool"),
])
def test_bad_selection_parameters_are_plan_errors(tmp_path: Path, params: str, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        project(tmp_path, constant_matmul, DYNAMIC % params)


def test_preprocess_is_accepted_for_both_methods(tmp_path: Path) -> None:
    model = project(tmp_path, constant_matmul, DYNAMIC % ", preprocess = true", STATIC % ", preprocess = true")
    assert [c.recipe.param("preprocess") for c in model.candidates if c.recipe] == [True, True]
