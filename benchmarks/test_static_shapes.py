"""Static shapes: the harness with ``options.static_shapes`` against ``benchmark_app -shape`` on the same model.

OpenVINO compiles a model with dynamic dims into shape-agnostic kernels and infers shapes at run time; a deployment
serves one shape, and ``benchmark_app -shape x[1,3,H,W]`` measures that. The issue: the harness measured the
dynamic model, 1.27x slower than ``benchmark_app -shape`` (and level with benchmark_app left dynamic). With
``static_shapes`` the backend reshapes to the served shape before compiling; this benchmark checks it then runs
within 3% of ``benchmark_app -shape``, and reports what the static shape gains over the dynamic one in both tools.

Model: the published NudeNet 320n detector (``certify.fixtures.published``, a YOLOv8n export, input ``images``
[batch, 3, height, width] all dynamic but C), converted to an IR with float32 weights and served at 1x3x320x320
(about 30 ms on one core of this host). Where it cannot be fetched (offline), a small detector-like conv net built
here stands in (SiLU conv stages, an upsample + concat neck, an 85-channel head; input ``x``, about 10 ms). Same
compile properties on both sides: benchmark_app gets the
backend's own ``compile_config()`` through ``-load_config`` (LATENCY, NUM_STREAMS 1, INFERENCE_NUM_THREADS 1) and
``-hint latency`` (its sync API: one request, ``infer()`` in a loop); ``-ip f32``, because benchmark_app otherwise
takes a 4-D input for an image and compiles a u8 input with a conversion the harness does not have. The settings,
the precision in force and the compiled input shape are read back on both sides and must agree.

Arms, interleaved in rounds (A B C D / D C B A) so drift hits all alike:

- ``harness_static``: a ``WorkerClient`` worker with ``static_shapes`` (load, feeds, ``run``), the asserted arm;
- ``app_static``: a fresh ``benchmark_app -shape`` process per round, ``-niter`` the harness's iterations, median
  latency parsed from its output;
- ``harness_dynamic``: a worker without ``static_shapes`` (what the harness measured before);
- ``app_dynamic``: ``benchmark_app -data_shape`` (the model left dynamic; benchmark_app then fills inputs inside
  its loop, "full mode").

Measured here (AMD EPYC, AVX2 only, so FP32 runs in FP32; 1 thread; a shared 2-core VM whose rounds still spread
28-40 ms): NudeNet static, harness / benchmark_app -shape = 0.991 pooled median, 1.005 throughput, 1.014 median of
the per-round ratios; the built conv net 1.012. What the static shape gains here is smaller than the issue's 1.27x:
dynamic / static 1.05x on NudeNet, 1.08-1.10x on the conv net, in both tools alike (the gain depends on the CPU's
kernels; not verified on a BF16/AMX host like the issue's).

Writes ``reports/benchmarks/static_shapes.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_support as bs
import numpy as np
import pytest
from test_native_openvino import COMPARED, PROPERTY_LINE, benchmark_app_command, normalized

from certify.backends.openvino import OpenVinoBackend
from certify.measure.client import WorkerClient
from certify.plan import ModelRef

pytest.importorskip("openvino")
pytest.importorskip("onnx")
SERVED = [1, 3, 320, 320]
THREADS, ROUNDS, SECONDS = 1, 8, 3.0
OPTIONS = (("num_streams", 1), ("performance_hint", "LATENCY"))
FIGURE = {name: re.compile(pattern, re.MULTILINE) for name, pattern in {
    "median_ms": r"^\[ INFO \]\s+Median:\s+([\d.]+) ms", "mean_ms": r"^\[ INFO \]\s+Average:\s+([\d.]+) ms",
    "iterations": r"^\[ INFO \] Count:\s+(\d+) iterations", "duration_ms": r"^\[ INFO \] Duration:\s+([\d.]+) ms",
    "throughput_per_s": r"^\[ INFO \] Throughput:\s+([\d.]+) FPS"}.items()}
INPUT_LINE = re.compile(r"^\[ INFO \]\s+(\S+) \(node: [^)]*\) : \S+ / \S+ / \[([^\]]*)\]$")


@dataclass(frozen=True)
class Detector:
    xml: Path  # the IR, dynamic dims, float32 weights
    npy: Path  # its served input
    input: str
    what: str


def build_detector(path: Path, seed: int = 0) -> Path:
    """The stand-in conv net of the module docstring, as ONNX with x [batch, 3, h, w]: shapes flow through strides, an
    upsample and a concat, as in a real detector's neck."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng, nodes, inits = np.random.default_rng(seed), [], []

    def conv(name: str, source: str, cin: int, cout: int, kernel: int, stride: int) -> str:
        w = (rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2 / (cin * kernel * kernel)))
        inits.extend([numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")])
        nodes.extend([helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                       pads=[kernel // 2] * 4, strides=[stride, stride]),
                      helper.make_node("Sigmoid", [f"{name}_c"], [f"{name}_s"]),
                      helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [name])])  # SiLU
        return name

    x = conv("c3", conv("c2", conv("c1", "x", 3, 16, 3, 2), 16, 32, 3, 2), 32, 32, 3, 1)
    p3 = conv("c5", conv("c4", x, 32, 64, 3, 2), 64, 64, 3, 1)
    p4 = conv("c7", conv("c6", p3, 64, 128, 3, 2), 128, 128, 3, 1)
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes += [helper.make_node("Resize", [p4, "", "scales"], ["up"], mode="nearest"),
              helper.make_node("Concat", ["up", p3], ["cat"], axis=1)]
    head = conv("head", conv("neck", "cat", 192, 64, 1, 1), 64, 85, 1, 1)
    nodes.append(helper.make_node("Identity", [head], ["y"]))
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 3, "h", "w"])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def published_detector() -> tuple[Path, str, str] | None:
    """NudeNet 320n from ``certify.fixtures.published`` (fetched once into the cache), or None where it cannot be
    fetched."""
    try:
        from certify.fixtures import published
    except ImportError:
        return None
    try:
        path = published.ensure("nudenet")
    except published.FixtureUnavailable as exc:
        print(f"\nNudeNet 320n unavailable ({exc.message}): the built conv net stands in")
        return None
    return path, "images", published.MODELS["nudenet"].what


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    """The IR (dynamic dims, float32 weights) and its served input (uniform [0, 1), as the detector's pixels)."""
    import openvino as ov

    folder = tmp_path_factory.mktemp("static")
    onnx_path, name, what = published_detector() or (
        build_detector(folder / "detector.onnx"), "x", "float32 conv net built here (SiLU stages, upsample + "
        "concat neck, 85-channel head)")
    xml = folder / "detector.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    npy = folder / "input.npy"
    np.save(npy, np.random.default_rng(1).random(SERVED, dtype=np.float32))
    return Detector(xml, npy, name, what)


def model_ref(model: Detector, static: bool) -> ModelRef:
    shapes = (("static_shapes", {model.input: SERVED}),) if static else ()
    return ModelRef(name="static" if static else "dynamic", path=model.xml, framework="openvino", device="cpu",
                    threads=THREADS, options=OPTIONS + shapes)


def run_benchmark_app(model: Detector, config: Path, iterations: int, static: bool) -> dict[str, Any]:
    """One benchmark_app run, ``-shape`` (static) or ``-data_shape`` (dynamic): its figures parsed from its
    output, the properties it compiled with (step 8) and the input shape it compiled (the last listing)."""
    shape = f"{model.input}[{','.join(map(str, SERVED))}]"
    command = [*benchmark_app_command(), "-m", str(model.xml), "-d", "CPU", "-hint", "latency", "-load_config",
               str(config), "-i", str(model.npy), "-ip", "f32", "-niter", str(iterations),
               "-shape" if static else "-data_shape", shape]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"benchmark_app failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-900:]}"
    figures: dict[str, Any] = {}
    for name, pattern in FIGURE.items():
        found = pattern.search(done.stdout)
        assert found, f"no {name} in benchmark_app's output:\n{done.stdout[-2000:]}"
        figures[name] = int(found.group(1)) if name == "iterations" else float(found.group(1))
    lines = done.stdout.splitlines()
    figures["properties"] = dict(m.groups() for line in lines if (m := PROPERTY_LINE.match(line)))
    shapes = [m.group(2) for line in lines if (m := INPUT_LINE.match(line)) and m.group(1) == model.input]
    figures["compiled_shape"] = shapes[-1] if shapes else None
    figures["command"] = command
    return figures


def app_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """benchmark_app's rounds in the shape of ``bs.latency_figures``."""
    return {"median_ms": float(np.median([r["median_ms"] for r in runs])),
            "block_medians_ms": [r["median_ms"] for r in runs],
            "throughput_per_s": sum(r["iterations"] for r in runs) / (sum(r["duration_ms"] for r in runs) / 1e3),
            "block_throughput_per_s": [r["throughput_per_s"] for r in runs],
            "mean_ms": float(np.mean([r["mean_ms"] for r in runs])), "compiled_shape": runs[0]["compiled_shape"],
            "command": runs[0]["command"]}


def test_static_shapes_match_benchmark_app_shape(detector, benchmark_lock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    load = bs.HostLoad()
    static_ref, dynamic_ref = model_ref(detector, static=True), model_ref(detector, static=False)
    compile_config = OpenVinoBackend(static_ref).compile_config()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"CPU": compile_config}))
    x = np.load(detector.npy)
    with WorkerClient("static", static_ref, timeout_s=300) as static, \
            WorkerClient("dynamic", dynamic_ref, timeout_s=300) as dynamic:
        loaded = {"static": static.call("load", ref=static_ref), "dynamic": dynamic.call("load", ref=dynamic_ref)}
        for worker in (static, dynamic):
            worker.call("feeds", key="speed", arrays={detector.input: x})
        warm = static.call("run", key="speed", iterations=20, rewarm=3)
        dynamic.call("run", key="speed", iterations=20, rewarm=3)
        iterations = max(50, int(SECONDS * 1e9 / float(np.median(warm))))
        arms = {
            "harness_static": lambda: static.call("run", key="speed", iterations=iterations, rewarm=3),
            "app_static": lambda: run_benchmark_app(detector, config, iterations, static=True),
            "harness_dynamic": lambda: dynamic.call("run", key="speed", iterations=iterations, rewarm=3),
            "app_dynamic": lambda: run_benchmark_app(detector, config, iterations, static=False),
        }
        results = bs.interleave(arms, ROUNDS)
    environment = bs.environment(benchmark_lock, load, threads=THREADS)
    figures = static_figures(detector, results, loaded, compile_config, iterations, environment)
    path = bs.write_report("static_shapes", figures)
    print_summary(figures, path)
    differing = {k: v for k, v in figures["settings"].items() if v["harness"] != v["benchmark_app"]}
    assert not differing, f"the harness and benchmark_app compiled with different settings: {differing}"
    for what in ("quiet_blocks_latency", "quiet_blocks_throughput"):
        verdict = figures["ratio"]["static"][what]
        assert verdict["within_guard"], bs.guard_message(f"static {what}", verdict["ratio"], figures)


def static_figures(model: Detector, results: dict[str, list[Any]], loaded: dict[str, Any],
                   compile_config: dict[str, Any], iterations: int, environment: dict[str, Any]) -> dict[str, Any]:
    harness = {k: bs.latency_figures(results[f"harness_{k}"]) for k in ("static", "dynamic")}
    app = {k: app_figures(results[f"app_{k}"]) for k in ("static", "dynamic")}
    info = {k: loaded[k]["info"] for k in loaded}
    in_force = next(iter(info["static"]["in_force"].values()))
    properties = results["app_static"][0]["properties"]
    settings = {k: {"harness": normalized(in_force.get(k)), "benchmark_app": normalized(properties.get(k))}
                for k in COMPARED}
    settings["compiled_shape"] = {"harness": info["static"]["compiled_shapes"][model.input],
                                  "benchmark_app": [int(d) for d in app["static"]["compiled_shape"].split(",")]}
    return {
        "benchmark": "harness with options.static_shapes vs benchmark_app -shape (and both left dynamic)",
        "model": {"kind": f"{model.what}; as an OpenVINO IR (float32 weights), dynamic batch, H and W",
                  "input": model.input, "served_shape": SERVED,
                  "executed_device": loaded["static"]["executed_device"]},
        "compile_config": compile_config, "settings": settings, "rounds": ROUNDS, "iterations_per_round": iterations,
        "order": "interleaved, A B C D / D C B A",
        "harness_info": {k: {key: info[k].get(key) for key in ("compiled_shapes", "reshaped", "precision")}
                         for k in info},
        "harness": harness, "benchmark_app": app,
        "ratio": {"static": bs.latency_ratios(harness["static"], app["static"]),
                  "dynamic": bs.latency_ratios(harness["dynamic"], app["dynamic"]),
                  "dynamic_over_static_harness": harness["dynamic"]["median_ms"] / harness["static"]["median_ms"],
                  "dynamic_over_static_benchmark_app": app["dynamic"]["median_ms"] / app["static"]["median_ms"],
                  "harness_dynamic_over_app_static": harness["dynamic"]["median_ms"] / app["static"]["median_ms"]},
        "target": bs.RULE, "environment": environment,
    }


def print_summary(figures: dict[str, Any], path: Path) -> None:
    h, a, r = figures["harness"], figures["benchmark_app"], figures["ratio"]
    static = r["static"]["median_latency"]["ratio"]
    print(f"\nstatic: harness {h['static']['median_ms']:.3f} ms vs benchmark_app -shape {a['static']['median_ms']:.3f} "
          f"ms (x{static:.4f}, {bs.verdict(static)}; quiet blocks x{r['static']['quiet_blocks_latency']['ratio']:.4f})"
          f"\ndynamic: harness {h['dynamic']['median_ms']:.3f} ms vs benchmark_app {a['dynamic']['median_ms']:.3f} ms "
          f"(x{r['dynamic']['median_latency']['ratio']:.4f}); dynamic/static: harness "
          f"x{r['dynamic_over_static_harness']:.3f}, benchmark_app x{r['dynamic_over_static_benchmark_app']:.3f}; "
          f"harness dynamic vs benchmark_app -shape x{r['harness_dynamic_over_app_static']:.3f} -> {path}")
