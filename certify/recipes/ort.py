"""ONNX Runtime quantization recipes: dynamic and static (QDQ or QOperator, calibrated on the plan's dataset).

Both methods pre-process the source first (``preprocess = true``, the default): ORT's ``quant_pre_process`` (symbolic
shape inference, ORT's basic graph optimizations, ONNX shape inference), then :func:`fold_constants`, which moves
weights held by ``Constant`` nodes into initializers. Folding runs every time, not only when ``quant_pre_process``
fails, because (measured on ORT 1.32) ``quant_pre_process`` folds Constant nodes only as a side effect of its graph
optimization, which it skips with a logged error when ORT cannot load the model, and never inside If/Loop/Scan
subgraphs; ORT's quantizers quantize only weights that are initializers, and ``quantize_dynamic`` raises "Expected
<name> to be an initializer" on a Conv whose weight is a Constant node (a published PaddleOCR-derived model does).

After quantizing, the recipe counts the candidate nodes of the source (:data:`CANDIDATE_OPS`, subgraphs included)
and the nodes of the output that compute on quantized weights, and records both with the pre-processing that ran in
``ort.json`` next to the model (:func:`quantization_facts`). A build that quantized no node is a RecipeError: an
"INT8" candidate that is still FP32 must never be certified as INT8.

What ORT 1.32 does with If/Loop/Scan subgraphs (measured): ``quantize_dynamic`` leaves them untouched unless
``extra_options={"EnableSubgraph": True}`` (the recipe's ``subgraphs = true``), with which it quantizes their
MatMul/Conv nodes; ``quantize_static`` never enters them (QDQ ignores EnableSubgraph, QOperator crashes with it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from certify.errors import did_you_mean
from certify.recipes import RecipeError

if TYPE_CHECKING:
    import onnx

    from certify.recipes.build import BuildContext
    from certify.recipes.child import Calibration

DEFAULT_SAMPLES = 200
RECORD = "ort.json"  # the facts of an ORT quantization build, next to its model.onnx
WORK = "ort-work"  # pre-processed intermediates; removed after the build
LARGE_MODEL_BYTES = 1_500_000_000  # protobuf cannot serialize 2 GB: write such models with external data
PRE_PROCESS_LOGGER = "onnxruntime.quantization.shape_inference"

# Nodes that compute on quantized weights in ORT's output: QOperator and dynamic ops. In QDQ format a quantized
# node keeps its op type and reads its inputs from DequantizeLinear nodes instead (see quantized_nodes).
QUANTIZED_COMPUTE_OPS = {"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "QGemm", "QAttention",
                         "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                         "QLinearConvTranspose"}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"} | QUANTIZED_COMPUTE_OPS
# The weight-bearing nodes whose quantization makes a model INT8 (what "quantized 12 of 14 nodes" counts).
CANDIDATE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Attention"}

Quantizer = Callable[[Path, Path, dict[str, Any]], None]  # (prepared source, output, common options)
log = logging.getLogger(__name__)


# --- the graph, subgraphs included ---------------------------------------------------------------------------

def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def nodes(graph: onnx.GraphProto, owner: str = "") -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node of ``graph`` and of its subgraphs, each with the op type of the If/Loop/Scan node whose
    subgraph holds it ('' for the main graph): quantizers treat the two differently."""
    for node in graph.node:
        yield node, owner
        for sub in _subgraphs(node):
            yield from nodes(sub, node.op_type)


def candidate_nodes(graph: onnx.GraphProto) -> tuple[Counter[str], Counter[str]]:
    """The quantizable nodes of a float graph by op type, and how many of them sit in subgraphs, by owner op."""
    ops: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    for node, owner in nodes(graph):
        if node.op_type in CANDIDATE_OPS:
            ops[node.op_type] += 1
            if owner:
                inside[owner] += 1
    return ops, inside


def quantized_nodes(graph: onnx.GraphProto) -> Counter[str]:
    """The nodes of a quantized graph that compute on quantized weights, by op type: QOperator/dynamic integer ops,
    and in QDQ format the candidate nodes whose weight (input 1 of every candidate op) is a DequantizeLinear's
    output; a node that only reads a quantized activation (its producer was quantized) does not count."""
    dequantized = {out for node, _ in nodes(graph) if node.op_type == "DequantizeLinear" for out in node.output}
    found: Counter[str] = Counter()
    for node, _ in nodes(graph):
        if node.op_type in QUANTIZED_COMPUTE_OPS or (
                node.op_type in CANDIDATE_OPS and len(node.input) > 1 and node.input[1] in dequantized):
            found[node.op_type] += 1
    return found


# --- pre-processing ----------------------------------------------------------------------------------------

def fold_constants(graph: onnx.GraphProto) -> int:
    """Move the tensors of ``Constant`` nodes (their ``value`` attribute) into initializers of the graph that holds
    them, subgraphs included; returns how many. Lossless: a Constant and an initializer of the same name are the
    same value to every consumer, but ORT's quantizers only quantize weights that are initializers. A Constant
    that is its graph's output stays (an initializer cannot be one in every IR version)."""
    import onnx

    keep = {out.name for out in graph.output} | {init.name for init in graph.initializer}
    folded = []
    for index, node in enumerate(graph.node):
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                     None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None \
                and node.output[0] not in keep:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            folded.append(index)
    for index in reversed(folded):
        del graph.node[index]
    return len(folded) + sum(fold_constants(sub) for node in graph.node for sub in _subgraphs(node))


def _large(model: Path) -> bool:
    """Whether the model must be written with external data: it has some already, or it is near protobuf's 2 GB."""
    from certify.digests import model_files

    return len(model_files(model)) > 1 or model.stat().st_size > LARGE_MODEL_BYTES


def _save(model: onnx.ModelProto, path: Path, large: bool) -> None:
    import onnx

    if large:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
    else:
        onnx.save_model(model, str(path))


@contextmanager
def _logged_errors(name: str) -> Iterator[list[str]]:
    """The errors ``name`` logs meanwhile, by their last line: quant_pre_process logs (and otherwise ignores) a
    failed graph optimization, and the recipe must say so rather than carry on silently."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines = record.getMessage().strip().splitlines()
            if record.levelno >= logging.ERROR and lines and not lines[-1].startswith("ONNX Runtime Model Opt"):
                errors.append(lines[-1])

    errors: list[str] = []
    logger, handler = logging.getLogger(name), Collect()
    logger.addHandler(handler)
    try:
        yield errors
    finally:
        logger.removeHandler(handler)


@contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run in ``folder``: ORT's symbolic shape inference writes ``sym_shape_infer_temp.onnx`` into the current
    directory when it cannot infer every shape, and the build must not leave files in the user's project."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _pre_processed(source: Path, work: Path, large: bool) -> tuple[Path, dict[str, Any]]:
    """ORT's quant_pre_process, retried without symbolic shape inference (which refuses ops it does not know);
    the source as it is when both fail. Returns the model and what ran, with the errors that stopped a step."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, out, errors = source.resolve(), (work / "preprocessed.onnx").resolve(), []
    for symbolic in (True, False):
        with _logged_errors(PRE_PROCESS_LOGGER) as logged, _inside(work):
            try:
                quant_pre_process(str(source), str(out), skip_symbolic_shape=not symbolic,
                                  save_as_external_data=large, external_data_location=f"{out.name}.data")
            except Exception as exc:  # the tool's own failure: recorded, and the next attempt runs
                errors.append(_first_line(exc))
                continue
        skipped = ([] if symbolic else ["symbolic shape inference"]) + (["ORT graph optimization"] if logged else [])
        status = "ran" + (f" without {' and '.join(skipped)}" if skipped else "")
        return out, {"quant_pre_process": status, "errors": errors + logged}
    return source, {"quant_pre_process": "failed", "errors": errors}


def prepared(source: Path, work: Path, preprocess: bool) -> tuple[Path, dict[str, Any]]:
    """The model to quantize and a record of the pre-processing that ran (``preprocess = false``: the source)."""
    import onnx

    if not preprocess:
        return source, {"requested": False, "quant_pre_process": "not run", "errors": [], "folded_constants": 0}
    large = _large(source)
    model_path, record = _pre_processed(source, work, large)
    model = onnx.load(str(model_path))
    folded = fold_constants(model.graph)
    if folded:
        model_path = work / "folded.onnx"
        _save(model, model_path, large)
    record = {"requested": True, **record, "folded_constants": folded}
    if record["errors"]:
        log.warning("pre-processing %s was incomplete (quant_pre_process %s: %s); %d Constant weight(s) folded",
                    source.name, record["quant_pre_process"], record["errors"][0], folded)
    return model_path, record


# --- the recipes ---------------------------------------------------------------------------------------------

def onnx_source(context: BuildContext, *, quantizing: bool = True) -> Path:
    """The source model, refused when it is not ONNX or, for a quantizing recipe, already quantized
    (re-quantizing fails obscurely)."""
    import onnx

    if context.source.suffix != ".onnx":
        raise RecipeError(f"{context.recipe.tool} {context.recipe.method} needs an ONNX source model, got "
                          f"{context.source.name}",
                          hint="set the recipe's 'from' to an ONNX model (the baseline or an ONNX candidate)")
    if not quantizing:
        return context.source
    ops = {n.op_type for n, _ in nodes(onnx.load(str(context.source), load_external_data=False).graph)}
    if ops & QUANTIZED_OPS:
        raise RecipeError(f"the source model {context.source.name} is already quantized "
                          f"(it has {', '.join(sorted(ops & QUANTIZED_OPS))})",
                          hint="quantize from the float model: set the recipe's 'from' to 'baseline'")
    return context.source


def quantize_dynamic(context: BuildContext, calibration: Calibration) -> Path:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    recipe = context.recipe

    def run(source: Path, out: Path, options: dict[str, Any]) -> None:
        ort_quantize_dynamic(str(source), str(out),
                             weight_type=getattr(QuantType, recipe.param("weight_type", "QInt8")),
                             per_channel=bool(recipe.param("per_channel", False)),
                             reduce_range=bool(recipe.param("reduce_range", False)), **options)

    return _quantize(context, run)


def model_feeds(model: Path, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Calibration samples keyed by the ONNX model's input names, in its input dtypes."""
    import onnx

    from certify.recipes.child import keyed_samples

    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return keyed_samples(samples, [(i.name, (i.name,), onnx.helper.tensor_dtype_to_np_dtype(
        i.type.tensor_type.elem_type)) for i in graph.input if i.name not in inits])


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def quantize_static(context: BuildContext, calibration: Calibration) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    recipe = context.recipe
    options: dict[str, Any] = {
        "quant_format": getattr(QuantFormat, recipe.param("format", "QDQ")),
        "activation_type": getattr(QuantType, recipe.param("activation_type", "QInt8")),
        "weight_type": getattr(QuantType, recipe.param("weight_type", "QInt8")),
        "per_channel": bool(recipe.param("per_channel", False)),
        "calibrate_method": getattr(CalibrationMethod, recipe.param("calibrate_method", "MinMax")),
    }

    def run(source: Path, out: Path, common: dict[str, Any]) -> None:
        samples = calibration.samples(int(recipe.param("samples", DEFAULT_SAMPLES)))
        ort_quantize_static(str(source), str(out), _Reader(model_feeds(source, samples)), **options, **common)

    return _quantize(context, run)


def _quantize(context: BuildContext, run: Quantizer) -> Path:
    """Pre-process, quantize with the tool's own error and a hint on failure, count what was quantized and record
    it in ``ort.json``; a RecipeError when no node was quantized."""
    import onnx

    recipe, source, out = context.recipe, onnx_source(context), context.out_dir / "model.onnx"
    work = context.out_dir / WORK
    work.mkdir(parents=True, exist_ok=True)
    try:
        model, preprocessing = prepared(source, work, bool(recipe.param("preprocess", True)))
        graph = onnx.load(str(model), load_external_data=False).graph
        options = _options(context, graph, onnx.load(str(source), load_external_data=False).graph)
        options["use_external_data_format"] = _large(model)
        try:
            run(model, out, options)
        except RecipeError:
            raise
        except Exception as exc:  # the quantizer's own failure, with what to try
            raise RecipeError(f"onnxruntime {recipe.method} failed on {source.name}: {_first_line(exc)}",
                              hint=_failure_hint(context, str(exc), graph, preprocessing)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    facts = _facts(context, source, out, options, preprocessing)
    if not facts["quantized_nodes"]:
        raise RecipeError(_nothing_quantized(context, source, facts), hint=_nothing_hint(context, facts))
    (context.out_dir / RECORD).write_text(json.dumps(facts, indent=2, sort_keys=True))
    return out


def quantization_facts(model: Path) -> dict[str, Any]:
    """What an ORT quantization recipe recorded about ``model`` (its ``ort.json``), {} for any other model. Keys:
    ``quantized_nodes`` (nodes computing on quantized data), ``candidate_nodes`` (quantizable nodes of the source),
    ``candidate_nodes_in_subgraphs``, ``quantized_ops`` and ``candidate_ops`` (counts by op type), ``summary``
    ("quantized 12 of 14 candidate nodes"), ``preprocess`` (``requested``, ``quant_pre_process``, ``errors``,
    ``folded_constants``), ``subgraphs``, ``op_types_to_quantize``, ``nodes_to_exclude``."""
    try:
        data = json.loads((model.parent / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("tool") == "onnxruntime" else {}


# --- options, facts and messages -----------------------------------------------------------------------------

def _method_ops(context: BuildContext) -> set[str]:
    """The op types ORT's quantizer for this recipe knows (its operator registry), as op_types_to_quantize names
    them."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if context.recipe.method == "quantize_dynamic":
        return set(IntegerOpsRegistry)
    return set(QDQRegistry if context.recipe.param("format", "QDQ") == "QDQ" else QLinearOpsRegistry)


def _quantized_candidates(context: BuildContext) -> set[str]:
    """The candidate op types this recipe can quantize: quantize_dynamic rewrites every Gemm into MatMul + Add first
    (ORT's replace_gemm_with_matmul), so it quantizes Gemm although its registry does not list it."""
    dynamic = context.recipe.method == "quantize_dynamic"
    return CANDIDATE_OPS & (_method_ops(context) | ({"Gemm"} if dynamic else set()))


def _enters_subgraphs(context: BuildContext) -> bool:
    return context.recipe.method == "quantize_dynamic" and bool(context.recipe.param("subgraphs", False))


def _options(context: BuildContext, graph: onnx.GraphProto, source: onnx.GraphProto) -> dict[str, Any]:
    """The options both quantizers take, checked against the model: ORT silently ignores an op type or a node
    name it does not find, which would quantize what the plan meant to leave out."""
    recipe = context.recipe
    op_types = [str(op) for op in recipe.param("op_types_to_quantize", ()) or ()]
    known = _method_ops(context)
    for op in op_types:
        if op == "Gemm" and recipe.method == "quantize_dynamic":
            raise RecipeError("op_types_to_quantize: quantize_dynamic turns every Gemm into MatMul + Add before it "
                              "quantizes, so 'Gemm' selects nothing", hint="list 'MatMul' instead")
        if op not in known:
            raise RecipeError(f"op_types_to_quantize: {recipe.method} does not quantize {op!r}"
                              f"{did_you_mean(op, known)}", hint=f"it quantizes {', '.join(sorted(known))}")
    excluded = [str(name) for name in recipe.param("nodes_to_exclude", ()) or ()]
    names = {node.name for g in (graph, source) for node, _ in nodes(g) if node.name}
    for name in excluded:
        if name not in names:
            raise RecipeError(f"nodes_to_exclude: the model has no node named {name!r}{did_you_mean(name, names)}",
                              hint="use node names as Netron shows them for the source model")
    return {"op_types_to_quantize": op_types or None, "nodes_to_exclude": excluded or None,
            "extra_options": {"EnableSubgraph": True} if _enters_subgraphs(context) else None}


def _facts(context: BuildContext, source: Path, out: Path, options: dict[str, Any],
           preprocessing: dict[str, Any]) -> dict[str, Any]:
    import onnx

    candidates, inside = candidate_nodes(onnx.load(str(source), load_external_data=False).graph)
    quantized = quantized_nodes(onnx.load(str(out), load_external_data=False).graph)
    done, total = sum(quantized.values()), sum(candidates.values())
    return {"tool": "onnxruntime", "method": context.recipe.method, "quantized_nodes": done,
            "candidate_nodes": total, "candidate_nodes_in_subgraphs": sum(inside.values()),
            "subgraph_owners": dict(inside), "quantized_ops": dict(quantized), "candidate_ops": dict(candidates),
            "summary": f"quantized {done} of {total} candidate nodes", "preprocess": preprocessing,
            "subgraphs": _enters_subgraphs(context), "op_types_to_quantize": options["op_types_to_quantize"],
            "nodes_to_exclude": options["nodes_to_exclude"] or []}


def _nothing_quantized(context: BuildContext, source: Path, facts: dict[str, Any]) -> str:
    inside, owners = facts["candidate_nodes_in_subgraphs"], "/".join(sorted(facts["subgraph_owners"]))
    where = ""
    if inside:
        enters = "enters only with subgraphs = true" if context.recipe.method == "quantize_dynamic" \
            else "does not enter"
        where = f"; {inside} inside {owners} subgraphs, which {context.recipe.method} {enters}"
        if _enters_subgraphs(context):
            where = f"; {inside} inside {owners} subgraphs"
    return f"the recipe quantized no node of {source.name} ({facts['candidate_nodes']} candidate nodes{where})"


def _nothing_hint(context: BuildContext, facts: dict[str, Any]) -> str:
    """What could make this model INT8, most specific first."""
    recipe, dynamic = context.recipe, context.recipe.method == "quantize_dynamic"
    if not facts["candidate_nodes"]:
        return (f"the model has none of {', '.join(sorted(CANDIDATE_OPS))}: there is nothing to quantize, and an "
                "INT8 candidate of it would still be float")
    tips = []
    if facts["candidate_nodes_in_subgraphs"] and not _enters_subgraphs(context):
        tips.append("set subgraphs = true (ORT's EnableSubgraph) to quantize inside them" if dynamic else
                    "use the quantize_dynamic method with subgraphs = true: ORT's quantize_static never enters "
                    "If/Loop/Scan subgraphs")
    unsupported = sorted(set(facts["candidate_ops"]) - _quantized_candidates(context))
    if unsupported:
        other = "quantize_static" if dynamic else "quantize_dynamic"
        tips.append(f"{recipe.method} does not quantize {', '.join(unsupported)}: try the {other} method")
    if not recipe.param("preprocess", True):
        tips.append("set preprocess = true (weights held by Constant nodes are not quantized)")
    if facts["op_types_to_quantize"]:
        tips.append(f"op_types_to_quantize = {facts['op_types_to_quantize']} limits what is quantized")
    tips.append("or quantize with another tool (e.g. an nncf recipe on an OpenVINO conversion)")
    return "; ".join(tips)


def _failure_hint(context: BuildContext, error: str, graph: onnx.GraphProto, preprocessing: dict[str, Any]) -> str:
    """What to try when ORT's quantizer raised: specific for a weight that is not an initializer, else the
    recipe's other levers."""
    recipe, tips = context.recipe, []
    weight = re.search(r"Expected (\S+) to be an initializer", error)
    if weight and not preprocessing["requested"]:
        tips.append("set preprocess = true: it folds weights held by Constant nodes into initializers")
    elif weight:
        users = [(n.name, n.op_type) for n, _ in nodes(graph) if weight.group(1) in n.input]
        named = [name for name, _ in users if name]
        ops = sorted({op for _, op in users})
        tips.append(f"{weight.group(1)!r} is computed by the graph, not stored: leave its node out with "
                    + (f"nodes_to_exclude = {named}" if named else "nodes_to_exclude")
                    + (f", or quantize other op types than {', '.join(ops)} with op_types_to_quantize" if ops else ""))
    else:
        if not preprocessing["requested"]:
            tips.append("set preprocess = true")
        tips.append("limit op_types_to_quantize (e.g. ['MatMul']) or exclude the failing node with nodes_to_exclude")
        tips.append(f"or try the {'quantize_static' if recipe.method == 'quantize_dynamic' else 'quantize_dynamic'}"
                    " method")
    if preprocessing["errors"]:
        tips.append(f"pre-processing was incomplete (quant_pre_process {preprocessing['quant_pre_process']}: "
                    f"{preprocessing['errors'][0]})")
    return "; ".join(tips)
