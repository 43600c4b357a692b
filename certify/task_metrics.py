"""Task metrics for what edge users certify: thresholded probability outputs, masks, detectors and recognisers.

Each entry of ``TASK_METRICS`` is a builder ``build(params) -> certify.metrics.Metric``: the plan's metric table
(``metric = { name = "map", iou = 0.5 }``) is validated here, so a bad parameter fails when the plan loads, as a
``MetricParamError`` naming the key.

Where a metric can use either the labels or the baseline's own outputs as the reference, it uses the labels when
the dataset has them, else the baseline's outputs. Against the baseline the values are agreement-style and
higher-is-better (the baseline scores 1.0 against itself), so retention (candidate / baseline) is the agreement.

``binary_agreement`` {threshold = 0.5}
    Per sample: the share of decisions ``p >= threshold`` equal to the reference's (the mean over elements when a
    sample has several). For one-column probability outputs, where an argmax is meaningless.
    Labels: 0/1 with the output's number of elements per sample (``[n]`` for outputs ``[n, 1]``).
``binary_f1`` {threshold = 0.5}
    Set-level F1 of the positive decisions against the reference's (1.0 when neither has any positive).
    Labels: as for ``binary_agreement``.
``mask_iou`` {threshold = 0.5}
    Per sample: IoU of the mask ``p >= threshold`` with the reference mask (both empty: 1.0). For probability
    maps such as text detectors and segmentation heads. Labels: 0/1 masks, e.g. ``[n, H, W]`` for ``[n, 1, H, W]``.
``map`` {decode = "yolov8", iou = COCO mAP@[.5:.95] (or a float, e.g. 0.5 for mAP50), score_threshold = 0.25,
nms_iou = 0.45 (yolov8 only), max_detections = 100}
    Set-level detection mAP through pycocotools' ``COCOeval`` (bbox). Detections below ``score_threshold`` are
    dropped and at most ``max_detections`` (the best-scoring) are kept per image, for both models and for a
    reference decoded from the baseline. Labels: float ``[n, K, 5]``, rows ``x1, y1, x2, y2, class`` in input
    pixels, padded with rows of -1 (any row with a negative class is padding).
``wer`` / ``cer`` {decode = "ctc_greedy", alphabet, blank = 0}
    Set-level word / character error rate through jiwer (total edits / total reference words or characters over
    the chosen samples); lower is better. Labels: the reference texts, a numpy string array ``[n]`` (dtype ``U``).
``word_agreement`` / ``char_agreement`` {decode = "ctc_greedy", alphabet, blank = 0}
    ``1 - WER`` / ``1 - CER`` of the candidate's text against the baseline's, clipped to [0, 1]; no labels.

Decoders
    ``decode = "yolov8"``: an Ultralytics YOLOv8-style head ``[n, 4 + C, A]``: per anchor ``cx, cy, w, h`` in input
    pixels and C class scores (no objectness). Per image: the best class, the score threshold, class-wise NMS.

    ``decode = "ctc_greedy"``: CTC logits ``[n, T, V]``: the best token per step, repeats collapsed, blanks
    dropped; the non-blank tokens in order are the characters of ``alphabet`` (``blank = 0``: token i+1 is
    ``alphabet[i]``), so V must be ``len(alphabet) + 1``.

    ``decode = "package.module:function"``: your own, imported when the metric is scored (the module must be
    importable from the project). It receives the scored output of all samples at once, ``[n, ...]``. For ``map``
    it returns n detections, each a tuple ``(boxes [k, 4] x1, y1, x2, y2 in pixels, scores [k], classes [k] int)``
    and does its own NMS; for the text metrics it returns n strings::

        # myproject/decoders.py; in the plan: metric = { name = "map", decode = "myproject.decoders:ssd" }
        def ssd(outputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            # outputs [n, A, 6]: x1, y1, x2, y2, score, class per row
            return [(o[:, :4], o[:, 4], o[:, 5].astype(int)) for o in outputs]

        # metric = { name = "word_agreement", decode = "myproject.decoders:words" }
        def words(outputs: np.ndarray) -> list[str]:
            return [" ".join(VOCAB[t] for t in row.argmax(-1) if t) for row in outputs]

pycocotools and jiwer are optional (``pip install edge-certify[tasks]``): imported only when a metric needs them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from certify.errors import CertifyError, did_you_mean
from certify.metrics import Metric


class MetricParamError(CertifyError):
    """A task metric's parameter is unknown, of the wrong type or out of range; ``key`` names it."""

    def __init__(self, key: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.key = key


class MetricDataError(CertifyError):
    """The outputs or labels cannot be scored by the metric (shape, dtype, an empty reference)."""


Check = Callable[[str, Any], Any]  # (key, value) -> the value, normalised; raises MetricParamError
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [k, 4] x1,y1,x2,y2 float, scores [k], classes [k]
Value = Callable[[np.ndarray], float]

_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# --- parameters ------------------------------------------------------------------------------------------------


def _read(metric: str, params: Mapping[str, Any], spec: Mapping[str, tuple[Any, Check]]) -> dict[str, Any]:
    """The metric's parameters: each given one checked, the others at their defaults; an unknown key is an error
    (a misspelt threshold silently left at its default would certify against the wrong decision)."""
    for key in params:
        if key not in spec:
            raise MetricParamError(key, f"unknown parameter {key!r} for metric {metric!r}{did_you_mean(key, spec)}",
                                   hint=f"{metric} takes {', '.join(spec) or 'no parameters'}")
    return {key: check(key, params[key]) if key in params else default for key, (default, check) in spec.items()}


def _number(low: float, high: float, *, low_open: bool = True, high_open: bool = True) -> Check:
    """A real number in a range (ends open or closed); TOML integers count, booleans do not."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise MetricParamError(key, f"{key} must be a number in {left}{low}, {high}{right}, got {value!r}")
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            raise MetricParamError(key, f"{key} must be in {left}{low}, {high}{right}, got {value!r}")
        return float(value)

    return check


def _optional(check: Check) -> Check:
    """``check``, or None (the parameter's own meaning of 'not set')."""
    return lambda key, value: None if value is None else check(key, value)


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MetricParamError(key, f"{key} must be a whole number >= 1, got {value!r}")
    return value


def _index(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MetricParamError(key, f"{key} must be a whole number >= 0, got {value!r}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise MetricParamError(key, f"{key} must be a non-empty string, got {value!r}")
    return value


def _decoder(builtin: str) -> Check:
    """The built-in decoder's name or a ``package.module:function`` (only its form is checked here: the module
    is imported when the metric is scored, as for user metrics)."""

    def check(key: str, value: Any) -> str:
        if value == builtin or (isinstance(value, str) and _TARGET.match(value)):
            return str(value)
        close = did_you_mean(str(value), [builtin])
        raise MetricParamError(key, f"{key} must be {builtin!r} or 'package.module:function', got {value!r}{close}",
                               hint="a function of the outputs [n, ...]: see certify.task_metrics for its contract")

    return check


THRESHOLD = _number(0.0, 1.0)  # a decision on a probability: 0 or 1 would make every decision the same


def _needs(package: str, metric: str) -> None:
    """Fail when the plan loads, not after both models ran, if the optional package is missing."""
    if importlib.util.find_spec(package) is None:
        raise MetricParamError("name", f"metric {metric!r} needs the {package} package, which is not installed",
                               hint="pip install 'edge-certify[tasks]'")


def _function(target: str) -> Callable[..., Any]:
    """The user's ``package.module:function`` (attribute paths allowed after the colon)."""
    module, _, attribute = target.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise MetricDataError(f"decoder {target!r} cannot be imported: {type(exc).__name__}: {exc}",
                              hint="the module must be importable from the project (its folder on sys.path)") from None
    if not callable(found):
        raise MetricDataError(f"decoder {target!r} is not a function")
    return found  # type: ignore[no-any-return]


# --- binary decisions and masks ------------------------------------------------------------------------------------


def _decisions(outputs: np.ndarray, threshold: float) -> np.ndarray:
    """``p >= threshold`` per element, one row per sample."""
    return np.asarray(outputs.reshape(len(outputs), -1) >= threshold)


def _label_decisions(labels: np.ndarray, like: np.ndarray, metric: str) -> np.ndarray:
    """0/1 labels as decisions shaped like the outputs' (a sample's labels must have its number of elements)."""
    if labels.dtype.kind not in "biuf" or len(labels) != len(like) or labels.size != like.size:
        raise MetricDataError(f"{metric}: labels {labels.dtype} {labels.shape} do not match the outputs' "
                              f"{like.shape[1]} element(s) per sample for {like.shape[0]} samples",
                              hint="labels need one 0/1 value per output element, a row per sample")
    values = labels.reshape(like.shape).astype(np.float64)
    if not np.isin(values, (0.0, 1.0)).all():
        raise MetricDataError(f"{metric}: labels must be 0 or 1", hint="threshold soft labels before certifying")
    return np.asarray(values == 1.0)


def _reference(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray, threshold: float,
               metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's decisions and the reference's: the labels when given, else the baseline's decisions."""
    mine = _decisions(outputs, threshold)
    if labels is not None:
        return mine, _label_decisions(labels, mine, metric)
    theirs = _decisions(baseline, threshold)
    if theirs.shape != mine.shape:
        raise MetricDataError(f"{metric}: outputs {outputs.shape} and baseline {baseline.shape} differ in shape")
    return mine, theirs


def build_binary_agreement(params: Mapping[str, Any]) -> Metric:
    threshold = _read("binary_agreement", params, {"threshold": (0.5, THRESHOLD)})["threshold"]

    def scores(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
        mine, theirs = _reference(outputs, labels, baseline, threshold, "binary_agreement")
        return np.asarray((mine == theirs).mean(axis=1), dtype=np.float64)

    return Metric("binary_agreement", per_sample=scores,
                  describe=f"share of decisions p >= {threshold:g} equal to the labels' (else the baseline's)")


def build_binary_f1(params: Mapping[str, Any]) -> Metric:
    threshold = _read("binary_f1", params, {"threshold": (0.5, THRESHOLD)})["threshold"]

    def corpus(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> Value:
        mine, theirs = _reference(outputs, labels, baseline, threshold, "binary_f1")
        counts = np.stack([(mine & theirs).sum(1), (mine & ~theirs).sum(1), (~mine & theirs).sum(1)], axis=1)

        def value(indices: np.ndarray) -> float:
            tp, fp, fn = counts[np.asarray(indices, dtype=np.int64)].sum(axis=0)
            return 1.0 if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))

        return value

    return Metric("binary_f1", corpus=corpus,
                  describe=f"F1 of the decisions p >= {threshold:g} against the labels' (else the baseline's)")


def build_mask_iou(params: Mapping[str, Any]) -> Metric:
    threshold = _read("mask_iou", params, {"threshold": (0.5, THRESHOLD)})["threshold"]

    def scores(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
        mine, theirs = _reference(outputs, labels, baseline, threshold, "mask_iou")
        inter, union = (mine & theirs).sum(axis=1), (mine | theirs).sum(axis=1)
        return np.asarray(np.where(union > 0, inter / np.maximum(union, 1), 1.0), dtype=np.float64)

    return Metric("mask_iou", per_sample=scores,
                  describe=f"mask IoU at p >= {threshold:g} against the label masks (else the baseline's)")


# --- detection ----------------------------------------------------------------------------------------------------


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1,y1,x2,y2 box with each of ``boxes`` [k, 4]."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.asarray(np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0))


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Class-wise greedy NMS: indices of the kept boxes, best score first (a box suppresses the same class's boxes
    overlapping it by more than ``iou``), at most ``limit``."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        same = classes[rest] == classes[best]
        order = rest[~same | (box_iou(boxes[best], boxes[rest]) <= iou)]
    return np.asarray(keep, dtype=np.int64)


def decode_yolov8(outputs: np.ndarray, score_threshold: float, nms_iou: float, limit: int) -> list[Detections]:
    """A YOLOv8 head ``[n, 4 + C, A]`` (cx, cy, w, h in pixels, then C class scores) to detections per image."""
    if outputs.ndim != 3 or outputs.shape[1] < 5:
        raise MetricDataError(f"map: decode 'yolov8' expects a head [n, 4 + classes, anchors], got {outputs.shape}",
                              hint="for another head layout give decode = 'package.module:function'")
    found = []
    for head in outputs:  # one image at a time: a float64 copy of a whole [128, 84, 8400] batch is 700 MB
        classes, scores = head[4:].argmax(axis=0), head[4:].max(axis=0).astype(np.float64)
        keep = scores >= score_threshold
        cx, cy, w, h = head[:4, keep].astype(np.float64)
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        kept = nms(boxes, scores[keep], classes[keep], nms_iou, limit)
        found.append((boxes[kept], scores[keep][kept], classes[keep][kept]))
    return found


def _checked_detections(got: Any, n: int, target: str) -> list[Detections]:
    """The user decoder's answer as detections, or a clear error naming what is wrong."""
    if not isinstance(got, Sequence) or len(got) != n:
        raise MetricDataError(f"decoder {target!r} must return a list of {n} detections (one per image), got "
                              f"{type(got).__name__}" + (f" of {len(got)}" if isinstance(got, Sequence) else ""))
    found = []
    for i, item in enumerate(got):
        try:
            boxes, scores, classes = (np.asarray(a) for a in item)
        except (TypeError, ValueError):
            raise MetricDataError(f"decoder {target!r}: image {i}: expected (boxes, scores, classes)") from None
        k = len(scores.reshape(-1))
        if boxes.reshape(-1).size != 4 * k or classes.reshape(-1).size != k:
            raise MetricDataError(f"decoder {target!r}: image {i}: boxes {boxes.shape}, scores {scores.shape} and "
                                  f"classes {classes.shape} must be [k, 4], [k] and [k]")
        found.append((boxes.reshape(k, 4).astype(np.float64), scores.reshape(k).astype(np.float64),
                      classes.reshape(k).astype(np.int64)))
    return found


def _limited(found: list[Detections], score_threshold: float, limit: int) -> list[Detections]:
    """Per image: the boxes with a positive area scoring at least the threshold, at most ``limit`` (the best).
    Also applied to the baseline's detections when they are the reference, so that it scores 1.0 on itself."""
    out = []
    for boxes, scores, classes in found:
        ok = (scores >= score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        order = np.argsort(-scores[ok], kind="stable")[:limit]
        out.append((boxes[ok][order], scores[ok][order], classes[ok][order]))
    return out


def label_boxes(labels: np.ndarray, n: int) -> list[Detections]:
    """Labels ``[n, K, 5]`` (x1, y1, x2, y2, class; rows with a negative class are padding) as detections."""
    if labels.ndim != 3 or labels.shape[0] != n or labels.shape[2] != 5:
        raise MetricDataError(f"map: labels must be [{n}, K, 5] (x1, y1, x2, y2, class per row), got {labels.shape}",
                              hint="pad each image's rows to the same K with rows of -1")
    rows = np.asarray(labels, dtype=np.float64)
    return [(r[r[:, 4] >= 0, :4], np.ones(int((r[:, 4] >= 0).sum())), r[r[:, 4] >= 0, 4].astype(np.int64))
            for r in rows]


def _coco_records(found: list[Detections]) -> list[list[dict[str, Any]]]:
    """Per image, its boxes as COCO annotation fields (xywh, area, category, score), built once per corpus."""
    records = []
    for boxes, scores, classes in found:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        records.append([{"bbox": [float(b[0]), float(b[1]), float(bw), float(bh)], "area": float(bw * bh),
                         "category_id": int(c), "score": float(s), "iscrowd": 0}
                        for b, bw, bh, c, s in zip(boxes, w, h, classes, scores, strict=True)])
    return records


def _coco(records: list[list[dict[str, Any]]], categories: list[int]) -> Any:
    """A pycocotools COCO object of the images (sample i is image i + 1), built in memory; annotation ids start
    at 1 (COCOeval takes id 0 for 'unmatched')."""
    from pycocotools.coco import COCO

    annotations = [{**record, "image_id": i + 1} for i, image in enumerate(records) for record in image]
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(len(records))], "annotations": annotations,
                    "categories": [{"id": c} for c in categories]}
    coco.createIndex()
    return coco


class CocoSubsets:
    """COCOeval's bbox AP of any multiset of the images, for a bootstrap that asks for hundreds of them.

    COCOeval matches each image's detections to its reference boxes on their own (``evaluate``, most of its
    time), then pools the images' matches into precision/recall (``accumulate``). So the matching runs once here,
    over all n images, and ``value(indices)`` gives ``accumulate`` the chosen images' matches, a repeated index
    counting as another image: the same numbers as a fresh COCOeval over those images (the tests check it), in a
    small share of the time. It relies on two stable pycocotools internals, the ``evalImgs`` layout [category,
    area range, image] and ``_paramsEval``; the tests compare it with a fresh COCOeval. ``value`` reuses one
    evaluator: call it from one thread."""

    def __init__(self, truth: list[list[dict[str, Any]]], found: list[list[dict[str, Any]]], categories: list[int],
                 iou: float | None, limit: int) -> None:
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout
            self.evaluator = COCOeval(_coco(truth, categories), _coco(found, categories), "bbox")
            configure(self.evaluator, iou, limit)
            self.evaluator.evaluate()
        self.images = len(truth)
        self.matches = list(self.evaluator.evalImgs)  # [category][image], one area range
        self.categories = len(self.evaluator._paramsEval.catIds)

    def value(self, indices: np.ndarray) -> float:
        """AP over the images at ``indices``; NaN when they hold no reference box."""
        chosen = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        evaluator = self.evaluator
        evaluator.evalImgs = [self.matches[k * self.images + i] for k in range(self.categories) for i in chosen]
        evaluator.params.imgIds = evaluator._paramsEval.imgIds = list(range(1, len(chosen) + 1))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate()
        return average_precision(evaluator)


def configure(evaluator: Any, iou: float | None, limit: int) -> None:
    """Only what the value needs: one area range (all boxes) and one detection limit, a quarter of the default
    work; COCO's ten IoU thresholds .50:.05:.95 unless ``iou`` names one."""
    evaluator.params.maxDets = [limit]
    evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0.0, 1e10]], ["all"]
    if iou is not None:
        evaluator.params.iouThrs = np.array([iou])


def average_precision(evaluator: Any) -> float:
    """The mean of an accumulated COCOeval's precision over IoU thresholds, recall points and the categories that
    have reference boxes (COCO marks the others -1), as ``COCOeval.summarize`` computes AP. Rounded to 12
    decimals: COCO adds ``np.spacing(1)`` to each precision's denominator, so a perfect match would read
    0.9999999999999998 rather than 1.0."""
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # [iou thresholds, recall points, categories]
    valid = precision[precision > -1]
    return round(float(valid.mean()), 12) if valid.size else math.nan


def _self_match(truth: list[Detections]) -> Value:
    """The baseline's value when its own detections are the reference: each detection matches its own box
    exactly, so COCOeval gives 1.0 (the tests check it) wherever there is a reference box, NaN elsewhere. Known
    without running COCOeval: half the bootstrap's evaluations, which are its cost."""
    boxes = np.array([len(scores) for _, scores, _ in truth])
    return lambda indices: 1.0 if boxes[np.asarray(indices, dtype=np.int64)].sum() else math.nan


def build_map(params: Mapping[str, Any]) -> Metric:
    p = _read("map", params, {
        "decode": ("yolov8", _decoder("yolov8")),
        "iou": (None, _optional(_number(0.0, 1.0))),
        "score_threshold": (0.25, _number(0.0, 1.0, low_open=False)),
        "nms_iou": (0.45, _number(0.0, 1.0, high_open=False)),
        "max_detections": (100, _count),
    })
    if p["decode"] != "yolov8" and "nms_iou" in params:
        raise MetricParamError("nms_iou", "nms_iou applies to decode = 'yolov8' only",
                               hint="your decoder does its own NMS")
    _needs("pycocotools", "map")

    def detections(outputs: np.ndarray) -> list[Detections]:
        if p["decode"] == "yolov8":
            found = decode_yolov8(outputs, p["score_threshold"], p["nms_iou"], p["max_detections"])
        else:
            found = _checked_detections(_function(p["decode"])(outputs), len(outputs), p["decode"])
        return _limited(found, p["score_threshold"], p["max_detections"])

    def corpus(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> Value:
        found = detections(outputs)
        truth = label_boxes(labels, len(outputs)) if labels is not None else (
            found if baseline is outputs else detections(baseline))
        if not any(len(scores) for _, scores, _ in truth):
            raise MetricDataError(
                "map: the reference has no boxes" + ("" if labels is not None else
                                                     f" (the baseline detects nothing at score >= "
                                                     f"{p['score_threshold']:g})") + ": mAP is undefined",
                hint="lower score_threshold, or check the decoder and the inputs' preprocessing")
        if labels is None and outputs is baseline:
            return _self_match(truth)
        categories = sorted({int(c) for _, _, classes in truth for c in classes})
        return CocoSubsets(_coco_records(truth), _coco_records(found), categories, p["iou"], p["max_detections"]).value

    which = "mAP@[.5:.95]" if p["iou"] is None else f"mAP@{p['iou']:g}"
    return Metric("map", corpus=corpus,
                  describe=f"COCO {which} of the {p['decode']} detections at score >= {p['score_threshold']:g} "
                           "against the labels' boxes (else the baseline's detections)")


# --- text ---------------------------------------------------------------------------------------------------------


def ctc_greedy(outputs: np.ndarray, alphabet: str, blank: int = 0) -> list[str]:
    """CTC logits ``[n, T, V]`` to text: the best token per step, repeats collapsed, blanks dropped."""
    if outputs.ndim != 3 or outputs.shape[2] != len(alphabet) + 1:
        raise MetricDataError(f"decode 'ctc_greedy' expects logits [n, steps, {len(alphabet) + 1}] (the "
                              f"{len(alphabet)}-character alphabet and a blank), got {outputs.shape}",
                              hint="give the model's full alphabet, in token order without the blank")
    chars = np.array([""] * outputs.shape[2], dtype=object)
    chars[[k for k in range(outputs.shape[2]) if k != blank]] = list(alphabet)
    tokens = outputs.argmax(axis=2)
    fresh = np.concatenate([np.ones((len(tokens), 1), bool), tokens[:, 1:] != tokens[:, :-1]], axis=1)
    return ["".join(chars[row[keep & (row != blank)]]) for row, keep in zip(tokens, fresh, strict=True)]


def _texts(labels: np.ndarray, n: int, metric: str) -> list[str]:
    """Label texts: a numpy string array with one string per sample."""
    flat = labels.reshape(-1) if labels.ndim <= 1 or labels.size == n else labels
    if flat.ndim != 1 or len(flat) != n or not (flat.dtype.kind == "U" or all(isinstance(t, str) for t in flat)):
        raise MetricDataError(f"{metric}: labels must be {n} strings (a numpy array of dtype U), got "
                              f"{labels.dtype} {labels.shape}")
    return [str(t) for t in flat]


def edit_counts(references: list[str], hypotheses: list[str], unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: jiwer's edits (substitutions + deletions + insertions) and the reference's length, in words or
    characters. An empty reference is counted here (jiwer 3 refuses it): every hypothesis token is an insertion."""
    import jiwer

    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    errors, lengths = np.zeros(len(references)), np.zeros(len(references))
    for i, (ref, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        if not (ref.split() if unit == "word" else ref.strip()):
            errors[i] = len(hyp.split()) if unit == "word" else len(hyp.strip())
            continue
        out = process(ref, hyp)
        errors[i] = out.substitutions + out.deletions + out.insertions
        lengths[i] = out.hits + out.substitutions + out.deletions
    return errors, lengths


def _text_metric(name: str, unit: str, agreement: bool) -> Callable[[Mapping[str, Any]], Metric]:
    """wer / cer (against the labels, lower is better) and word / char agreement (1 - the rate against the
    baseline's text, higher is better: the baseline agrees with itself fully)."""

    def build(params: Mapping[str, Any]) -> Metric:
        p = _read(name, params, {"decode": ("ctc_greedy", _decoder("ctc_greedy")), "alphabet": (None, _text),
                                 "blank": (0, _index)})
        if p["decode"] == "ctc_greedy" and p["alphabet"] is None:
            raise MetricParamError("alphabet", "decode = 'ctc_greedy' needs the alphabet",
                                   hint="alphabet = the characters of tokens 1, 2, ... (token 0 is the blank)")
        if p["decode"] == "ctc_greedy" and p["blank"] > len(p["alphabet"]):
            raise MetricParamError("blank", f"blank must be a token of the {len(p['alphabet']) + 1} "
                                            f"(0 to {len(p['alphabet'])}), got {p['blank']}")
        for key in ("alphabet", "blank"):
            if p["decode"] != "ctc_greedy" and key in params:
                raise MetricParamError(key, f"{key} applies to decode = 'ctc_greedy' only")
        _needs("jiwer", name)

        def decode(outputs: np.ndarray) -> list[str]:
            if p["decode"] == "ctc_greedy":
                return ctc_greedy(outputs, p["alphabet"], p["blank"])
            got = _function(p["decode"])(outputs)
            if not isinstance(got, Sequence) or len(got) != len(outputs) or not all(isinstance(t, str) for t in got):
                raise MetricDataError(f"decoder {p['decode']!r} must return a list of {len(outputs)} strings")
            return list(got)

        def corpus(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> Value:
            if agreement:
                references = decode(baseline)
            elif labels is None:
                raise MetricDataError(f"{name} needs the reference texts as labels")
            else:
                references = _texts(labels, len(outputs), name)
            hypotheses = references if agreement and outputs is baseline else decode(outputs)
            errors, lengths = edit_counts(references, hypotheses, unit)
            if not lengths.sum():
                whose = "the baseline's decoded text" if agreement else "every label text"
                raise MetricDataError(f"{name}: {whose} is empty: the error rate is undefined",
                                      hint="check the decoder (alphabet, blank) and the inputs")
            return lambda indices: _rate(errors, lengths, np.asarray(indices, dtype=np.int64), agreement)

        what = "1 - " + ("WER" if unit == "word" else "CER") if agreement else name.upper()
        against = "the baseline's text" if agreement else "the label texts"
        return Metric(name, corpus=corpus, higher_is_better=agreement, needs_labels=not agreement,
                      describe=f"{what} of the {p['decode']} text against {against} (jiwer)")

    return build


def _rate(errors: np.ndarray, lengths: np.ndarray, indices: np.ndarray, agreement: bool) -> float:
    """Total edits / total reference length over the chosen samples (NaN when they have no reference text)."""
    total = lengths[indices].sum()
    if not total:
        return math.nan
    rate = float(errors[indices].sum() / total)
    return min(max(1.0 - rate, 0.0), 1.0) if agreement else rate


TASK_METRICS: dict[str, Callable[[Mapping[str, Any]], Metric]] = {
    "binary_agreement": build_binary_agreement,
    "binary_f1": build_binary_f1,
    "mask_iou": build_mask_iou,
    "map": build_map,
    "wer": _text_metric("wer", "word", agreement=False),
    "cer": _text_metric("cer", "char", agreement=False),
    "word_agreement": _text_metric("word_agreement", "word", agreement=True),
    "char_agreement": _text_metric("char_agreement", "char", agreement=True),
}
