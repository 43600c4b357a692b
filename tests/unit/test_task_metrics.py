"""certify.task_metrics: thresholded decisions, masks, detection mAP (pycocotools) and error rates (jiwer).

Each metric passes a near-identical candidate (retention >= 0.95) and fails a clearly degraded one."""

from __future__ import annotations

import contextlib
import io
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from certify.errors import CertifyError
from certify.metrics import Metric
from certify.task_metrics import (
    TASK_METRICS,
    MetricDataError,
    MetricParamError,
    ctc_greedy,
    decode_yolov8,
    label_boxes,
    nms,
)

RETAINED = 0.95
TEXT_METRICS = ("wer", "cer", "word_agreement", "char_agreement")


def metric(name: str, **params: Any) -> Metric:
    return TASK_METRICS[name](params)


def value(m: Metric, outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray,
          indices: np.ndarray | None = None) -> float:
    """The metric over ``indices`` (all samples by default), per-sample or set-level alike."""
    chosen = np.arange(len(outputs)) if indices is None else np.asarray(indices)
    if m.corpus is not None:
        return m.corpus(outputs, labels, baseline)(chosen)
    assert m.per_sample is not None
    return float(m.per_sample(outputs, labels, baseline)[chosen].mean())


def retention(m: Metric, candidate: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Candidate / baseline (baseline / candidate when lower is better), as the accuracy gate judges it."""
    base, cand = value(m, baseline, labels, baseline), value(m, candidate, labels, baseline)
    num, den = (cand, base) if m.higher_is_better else (base, cand)
    return 1.0 if num == den else num / den


def test_every_task_metric_is_built_with_its_defaults_and_describes_itself() -> None:
    assert set(TASK_METRICS) == {"binary_agreement", "binary_f1", "mask_iou", "map", "wer", "cer",
                                 "word_agreement", "char_agreement"}
    for name, build in TASK_METRICS.items():
        m = build({"alphabet": "ab"} if name in TEXT_METRICS else {})
        assert m.name == name and m.describe
        assert (m.per_sample is None) != (m.corpus is None)
    assert TASK_METRICS["map"]({}).corpus is not None and TASK_METRICS["mask_iou"]({}).per_sample is not None
    assert not metric("wer", alphabet="ab").higher_is_better and metric("wer", alphabet="ab").needs_labels
    assert metric("word_agreement", alphabet="ab").higher_is_better
    assert not metric("word_agreement", alphabet="ab").needs_labels
    assert "mAP@0.5 " in metric("map", iou=0.5).describe and "mAP@[.5:.95]" in metric("map").describe


# --- parameters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params", "key", "says"), [
    ("binary_agreement", {"treshold": 0.5}, "treshold", "did you mean 'threshold'"),
    ("binary_f1", {"threshold": "high"}, "threshold", "must be a number"),
    ("mask_iou", {"threshold": True}, "threshold", "must be a number"),
    ("mask_iou", {"threshold": 1.0}, "threshold", "must be in (0.0, 1.0)"),
    ("map", {"iou": 0.0}, "iou", "must be in"),
    ("map", {"iou": "0.5"}, "iou", "must be a number"),
    ("map", {"score_threshold": -0.1}, "score_threshold", "[0.0, 1.0)"),
    ("map", {"nms_iou": 1.5}, "nms_iou", "(0.0, 1.0]"),
    ("map", {"max_detections": 0}, "max_detections", ">= 1"),
    ("map", {"max_detections": 2.5}, "max_detections", "whole number"),
    ("map", {"decode": "yolo8"}, "decode", "did you mean 'yolov8'"),
    ("map", {"decode": "not a function"}, "decode", "package.module:function"),
    ("map", {"decode": "pkg.mod:fn", "nms_iou": 0.5}, "nms_iou", "decode = 'yolov8' only"),
    ("map", {"iuo": 0.5}, "iuo", "did you mean 'iou'"),
    ("wer", {}, "alphabet", "needs the alphabet"),
    ("cer", {"alphabet": ""}, "alphabet", "non-empty string"),
    ("word_agreement", {"alphabet": "abc", "blank": 4}, "blank", "0 to 3"),
    ("char_agreement", {"alphabet": "abc", "blank": -1}, "blank", ">= 0"),
    ("wer", {"decode": "pkg.mod:fn", "alphabet": "abc"}, "alphabet", "ctc_greedy' only"),
    ("wer", {"decode": "ctc-greedy", "alphabet": "abc"}, "decode", "did you mean 'ctc_greedy'"),
])
def test_invalid_parameters_name_their_key(name: str, params: Mapping[str, Any], key: str, says: str) -> None:
    with pytest.raises(MetricParamError) as caught:
        TASK_METRICS[name](params)
    assert caught.value.key == key and isinstance(caught.value, CertifyError)
    assert says in caught.value.message, caught.value.message


def test_integers_count_as_numbers_and_none_keeps_the_coco_iou_range() -> None:
    assert "p >= 0.25 " in metric("binary_agreement", threshold=0.25).describe
    assert "mAP@[.5:.95]" in metric("map", iou=None).describe
    assert "score >= 0 " in metric("map", score_threshold=0).describe


# --- binary decisions and masks --------------------------------------------------------------------------------


def test_binary_agreement_on_known_decisions() -> None:
    baseline = np.array([[0.9], [0.2], [0.6], [0.4]])
    outputs = np.array([[0.8], [0.7], [0.6], [0.1]])
    m = metric("binary_agreement")
    assert m.per_sample is not None and m.higher_is_better and not m.needs_labels
    assert m.per_sample(outputs, None, baseline).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert m.per_sample(baseline, None, baseline).tolist() == [1.0] * 4
    assert m.per_sample(outputs, np.array([1, 0, 0, 0]), baseline).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert value(metric("binary_agreement", threshold=0.75), outputs, None, baseline) == 1.0
    several = np.array([[0.9, 0.1, 0.9, 0.9]])  # several decisions per sample: their mean
    assert m.per_sample(several, None, np.array([[0.9, 0.9, 0.9, 0.9]])).tolist() == [0.75]


def test_binary_agreement_passes_a_close_candidate_and_fails_a_degraded_one() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.uniform(size=(500, 1))
    close = np.clip(baseline + rng.normal(0, 0.005, baseline.shape), 0, 1)
    m = metric("binary_agreement")
    assert retention(m, close, baseline) >= RETAINED
    assert retention(m, rng.uniform(size=baseline.shape), baseline) < 0.7
    labels = (baseline[:, 0] >= 0.5).astype(np.int64)
    labels[:50] = 1 - labels[:50]  # a baseline at 90% accuracy
    assert value(m, baseline, labels, baseline) == pytest.approx(0.9)
    assert retention(m, close, baseline, labels) >= RETAINED
    assert retention(m, 1 - baseline, baseline, labels) < 0.2


def test_binary_labels_must_be_zero_or_one_of_the_outputs_shape() -> None:
    m = metric("binary_agreement")
    assert m.per_sample is not None
    outputs = np.array([[0.9], [0.2]])
    with pytest.raises(MetricDataError, match="must be 0 or 1"):
        m.per_sample(outputs, np.array([0.3, 1.0]), outputs)
    with pytest.raises(MetricDataError, match="do not match"):
        m.per_sample(outputs, np.array([1, 0, 1]), outputs)
    with pytest.raises(MetricDataError, match="do not match"):
        m.per_sample(outputs, np.array(["1", "0"]), outputs)


def test_binary_f1_counts_over_the_chosen_samples_repeats_included() -> None:
    baseline = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    outputs = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    m = metric("binary_f1")
    assert m.corpus is not None and m.per_sample is None
    f1 = m.corpus(outputs, None, baseline)
    assert f1(np.arange(3)) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1
    assert f1(np.array([0, 0])) == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))  # sample 0 twice: tp 2, fn 2
    assert f1(np.array([2, 2])) == 1.0  # no positive on either side: agreement
    assert m.corpus(baseline, None, baseline)(np.array([0, 1, 1])) == 1.0
    labels = np.array([[1, 1], [1, 0], [0, 0]])
    assert m.corpus(outputs, labels, baseline)(np.arange(3)) == f1(np.arange(3))


def test_binary_f1_passes_a_close_candidate_and_fails_a_degraded_one() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.uniform(size=(400, 1)) ** 3  # few positives: where F1 says more than agreement
    m = metric("binary_f1", threshold=0.3)
    assert retention(m, np.clip(baseline + rng.normal(0, 0.003, baseline.shape), 0, 1), baseline) >= RETAINED
    assert retention(m, rng.permutation(baseline), baseline) < 0.7


def blobs(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Probability maps [n, 1, size, size], each with one soft disc."""
    yy, xx = np.mgrid[:size, :size]
    centres, radii = rng.uniform(8, size - 8, (n, 2)), rng.uniform(3, 7, n)
    d = np.sqrt((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2)
    return np.asarray(1 / (1 + np.exp(d - radii[:, None, None])))[:, None]


def test_mask_iou_on_known_masks() -> None:
    baseline = np.zeros((3, 1, 2, 4))
    baseline[0, 0, 0, :] = 0.9  # 4 pixels
    baseline[1, 0, :, :2] = 0.9  # 4 pixels
    outputs = baseline.copy()
    outputs[0, 0, 1, 0] = 0.9  # one more pixel: 4 / 5
    outputs[1] = 0.0  # nothing: 0 / 4
    m = metric("mask_iou")
    assert m.per_sample is not None
    assert m.per_sample(outputs, None, baseline).tolist() == [0.8, 0.0, 1.0]  # both empty: 1.0
    labels = (baseline[:, 0] >= 0.5).astype(np.uint8)  # [n, H, W] for outputs [n, 1, H, W]
    assert m.per_sample(outputs, labels, baseline).tolist() == [0.8, 0.0, 1.0]
    assert value(metric("mask_iou", threshold=0.95), outputs, None, baseline) == 1.0


def test_mask_iou_passes_a_close_candidate_and_fails_a_degraded_one() -> None:
    rng = np.random.default_rng(2)
    baseline = blobs(rng, 64)
    m = metric("mask_iou")
    assert value(m, baseline, None, baseline) == 1.0
    assert retention(m, np.clip(baseline + rng.normal(0, 0.01, baseline.shape), 0, 1), baseline) >= RETAINED
    assert retention(m, np.roll(baseline, 3, axis=3), baseline) < 0.8  # masks three pixels off
    labels = (baseline[:, 0] >= 0.5).astype(np.float32)
    assert retention(m, baseline * 0.9, baseline, labels) < 0.95  # masks shrunk


# --- detection ----------------------------------------------------------------------------------------------------


def yolo_head(boxes: list[list[tuple[float, float, float, float, int, float]]], classes: int,
              anchors: int = 64, seed: int = 0) -> np.ndarray:
    """A YOLOv8 head [n, 4 + classes, anchors]: the given (cx, cy, w, h, class, score) boxes at the first
    anchors, the rest background (small random boxes scoring below 0.05)."""
    rng = np.random.default_rng(seed)
    head = np.zeros((len(boxes), 4 + classes, anchors))
    head[:, :4] = rng.uniform(5, 30, (len(boxes), 4, anchors))
    head[:, 4:] = rng.uniform(0, 0.05, (len(boxes), classes, anchors))
    for i, image in enumerate(boxes):
        for a, (cx, cy, w, h, c, s) in enumerate(image):
            head[i, :4, a] = cx, cy, w, h
            head[i, 4:, a] = 0.0
            head[i, 4 + c, a] = s
    return head


def scene(n: int, seed: int, classes: int = 3) -> list[list[tuple[float, float, float, float, int, float]]]:
    """n images with 2-6 separate objects each (on a grid, so no two overlap)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        cells = rng.choice(16, size=int(rng.integers(2, 7)), replace=False)
        images.append([(80.0 * (c % 4) + 40 + rng.uniform(-5, 5), 80.0 * (c // 4) + 40 + rng.uniform(-5, 5),
                        rng.uniform(20, 50), rng.uniform(20, 50), int(rng.integers(classes)),
                        float(rng.uniform(0.4, 1.0))) for c in cells])
    return images


def test_nms_keeps_the_best_box_of_each_overlapping_group_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = np.array([0, 0, 1, 0, 2])
    assert nms(boxes, scores, classes, 0.45, 100).tolist() == [4, 0, 2, 3]  # box 1 overlaps box 0 (IoU 0.82)
    assert nms(boxes, scores, classes, 0.9, 100).tolist() == [4, 0, 1, 2, 3]  # below this IoU: kept
    assert nms(boxes, scores, classes, 0.45, 2).tolist() == [4, 0]


def test_yolov8_decoder_on_a_hand_made_head() -> None:
    head = yolo_head([[(50, 50, 20, 20, 0, 0.9), (51, 50, 20, 20, 0, 0.8), (50, 50, 20, 20, 1, 0.7),
                       (200, 100, 40, 10, 1, 0.6), (300, 300, 10, 10, 0, 0.2)],
                      []], classes=2)
    (boxes, scores, classes), (none, _, _) = decode_yolov8(head, 0.25, 0.45, 100)
    np.testing.assert_allclose(boxes, [[40, 40, 60, 60], [40, 40, 60, 60], [180, 95, 220, 105]])
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6])  # 0.8 suppressed by 0.9 (same class), 0.2 below 0.25
    assert classes.tolist() == [0, 1, 1] and none.shape == (0, 4)
    assert len(decode_yolov8(head, 0.25, 0.45, 1)[0][1]) == 1
    with pytest.raises(MetricDataError, match=r"\[n, 4 \+ classes, anchors\]"):
        decode_yolov8(head[:, :4], 0.25, 0.45, 100)


def test_map_of_a_detection_set_against_itself_is_one_and_shifted_boxes_score_less() -> None:
    objects = scene(8, seed=3)
    head = yolo_head(objects, classes=3)
    m = metric("map")
    assert value(m, head.copy(), None, head) == 1.0  # through COCOeval
    assert value(m, head, None, head) == 1.0  # the baseline's own value, known without COCOeval
    assert m.corpus is not None and np.isnan(m.corpus(head, None, head)(np.array([], dtype=np.int64)))
    shifted = head.copy()
    shifted[:, 0, :] += 4.0  # every box 4 px to the right: IoU ~0.8-0.9
    assert 0.0 < value(m, shifted, None, head) < 1.0
    assert value(metric("map", iou=0.5), shifted, None, head) == 1.0  # still a match at IoU 0.5
    labels = label_rows(objects)
    assert value(m, head, labels, head) == 1.0
    assert value(m, shifted, labels, head) == value(m, shifted, None, head)


def label_rows(objects: list[list[tuple[float, float, float, float, int, float]]], pad: int = 8) -> np.ndarray:
    """Labels [n, K, 5] (x1, y1, x2, y2, class, padded with -1) of the objects."""
    labels = -np.ones((len(objects), pad, 5))
    for i, image in enumerate(objects):
        for k, (cx, cy, w, h, c, _) in enumerate(image):
            labels[i, k] = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, c
    return labels


def test_map_passes_a_close_candidate_and_fails_a_degraded_one() -> None:
    objects = scene(64, seed=4)
    baseline = yolo_head(objects, classes=3)
    rng = np.random.default_rng(5)
    close = baseline.copy()
    close[:, :4] += rng.normal(0, 0.3, close[:, :4].shape)  # boxes jitter by a third of a pixel
    close[:, 4:] = np.clip(close[:, 4:] + rng.normal(0, 0.01, close[:, 4:].shape), 0, 1)
    degraded = close.copy()
    degraded[:, :2, :] += rng.normal(0, 6, degraded[:, :2].shape)  # centres off by ~6 px
    lost = rng.uniform(size=(64, 64)) < 0.3
    degraded[:, 4:, :][np.broadcast_to(lost[:, None], degraded[:, 4:].shape)] = 0.0  # 30% of the boxes gone
    m = metric("map")
    assert retention(m, close, baseline) >= RETAINED
    assert retention(m, degraded, baseline) < 0.8
    labels = label_rows(objects)
    assert retention(m, close, baseline, labels) >= RETAINED
    assert retention(m, degraded, baseline, labels) < 0.8
    assert retention(metric("map", iou=0.5), degraded, baseline) < 0.8


def coco_oracle(truth: np.ndarray, found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                indices: np.ndarray) -> tuple[float, float]:
    """AP@[.5:.95] and AP50 of a fresh, default COCOeval (``summarize``) over the images at ``indices``, each
    position its own image, built the usual way (ground truth dataset, ``loadRes`` for the detections)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, i in enumerate(indices):
        images.append({"id": j + 1})
        for x1, y1, x2, y2, c in truth[i][truth[i][:, 4] >= 0]:
            annotations.append({"id": len(annotations) + 1, "image_id": j + 1, "category_id": int(c),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        boxes, scores, classes = found[i]
        results += [{"image_id": j + 1, "category_id": int(c), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                     "score": float(s)} for b, s, c in zip(boxes, scores, classes, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in sorted({a["category_id"] for a in annotations})]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def test_map_over_repeated_indices_equals_a_fresh_cocoeval_of_those_images() -> None:
    objects = scene(12, seed=6)
    labels = label_rows(objects)
    head = yolo_head(objects, classes=3)
    rng = np.random.default_rng(7)
    head[:, :4] += rng.normal(0, 2.0, head[:, :4].shape)
    head[:, 4:] *= rng.uniform(0.5, 1.0, head[:, 4:].shape)
    found = decode_yolov8(head, 0.25, 0.45, 100)
    coco, coco50 = metric("map").corpus, metric("map", iou=0.5).corpus
    assert coco is not None and coco50 is not None
    value_of, value50_of = coco(head, labels, head), coco50(head, labels, head)
    for indices in (np.arange(12), np.array([3, 3, 3, 0, 1]), rng.integers(0, 12, 12), np.array([5])):
        expected, expected50 = coco_oracle(labels, found, indices)
        assert value_of(indices) == pytest.approx(expected, abs=1e-12)
        assert value50_of(indices) == pytest.approx(expected50, abs=1e-12)
    repeated = value_of(np.array([0, 0, 1, 1]))
    assert repeated == pytest.approx(coco_oracle(labels, found, np.array([0, 0, 1, 1]))[0])


def test_map_counts_at_most_max_detections_per_image() -> None:
    objects = [[(40.0 + 30 * k, 40.0, 20.0, 20.0, 0, 0.9 - 0.01 * k) for k in range(6)]]
    head = yolo_head(objects, classes=1)
    assert value(metric("map", max_detections=3), head.copy(), None, head) == 1.0  # the reference is limited too
    assert value(metric("map", max_detections=3), head, label_rows(objects), head) == pytest.approx(0.5, abs=0.01)


def test_map_refuses_a_reference_without_boxes() -> None:
    head = yolo_head([[(50, 50, 20, 20, 0, 0.2)]] * 2, classes=1)
    m = metric("map")
    assert m.corpus is not None
    with pytest.raises(MetricDataError, match=r"no boxes \(the baseline detects nothing at score >= 0.25\)"):
        m.corpus(head, None, head)
    assert value(metric("map", score_threshold=0.1), head.copy(), None, head) == 1.0
    with pytest.raises(MetricDataError, match="the reference has no boxes"):
        m.corpus(head, -np.ones((2, 3, 5)), head)
    with pytest.raises(MetricDataError, match=r"labels must be \[2, K, 5\]"):
        m.corpus(head, -np.ones((2, 3, 4)), head)


def test_label_boxes_skip_the_padding_rows() -> None:
    labels = np.array([[[0, 0, 10, 10, 2], [-1, -1, -1, -1, -1]], [[-1, -1, -1, -1, -1]] * 2], dtype=np.float32)
    (boxes, scores, classes), (empty, _, _) = label_boxes(labels, 2)
    assert boxes.tolist() == [[0, 0, 10, 10]] and classes.tolist() == [2] and scores.tolist() == [1.0]
    assert empty.shape == (0, 4)


@pytest.fixture
def decoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user module of decoders, importable as ``user_decoders``."""
    (tmp_path / "user_decoders.py").write_text(textwrap.dedent("""
        import numpy as np

        def rows(outputs):  # [n, A, 6]: x1, y1, x2, y2, score, class
            return [(o[:, :4], o[:, 4], o[:, 5].astype(int)) for o in outputs]

        class Text:
            @staticmethod
            def words(outputs):  # [n, W] word ids, 0 = none
                vocab = ["", "the", "cat", "sat", "on", "mat"]
                return [" ".join(vocab[t] for t in row if t) for row in outputs.astype(int)]

        def too_few(outputs):
            return [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))]

        def bad_shapes(outputs):
            return [(np.zeros((2, 3)), np.zeros(2), np.zeros(2))] * len(outputs)

        def numbers(outputs):
            return [1] * len(outputs)

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_decoders", raising=False)
    return "user_decoders"


def test_map_with_a_user_decoder(decoders: str) -> None:
    baseline = np.array([[[10, 10, 30, 30, 0.9, 1], [50, 50, 90, 80, 0.8, 0], [0, 0, 5, 5, 0.1, 0]],
                         [[20, 20, 60, 60, 0.7, 2], [0, 0, 0, 0, 0.0, 0], [0, 0, 0, 0, 0.0, 0]]])
    m = metric("map", decode=f"{decoders}:rows")
    assert value(m, baseline.copy(), None, baseline) == 1.0
    close = baseline.copy()
    close[..., :4] += 0.2
    assert retention(m, close, baseline) >= RETAINED
    wrong_class = baseline.copy()
    wrong_class[0, 0, 5] = 2
    assert retention(m, wrong_class, baseline) < 0.95
    labels = np.array([[[10, 10, 30, 30, 1], [50, 50, 90, 80, 0]], [[20, 20, 60, 60, 2], [-1, -1, -1, -1, -1]]])
    assert value(m, baseline, labels, baseline) == 1.0


@pytest.mark.parametrize(("target", "says"), [
    ("too_few", "a list of 2 detections"), ("bad_shapes", "must be [k, 4], [k] and [k]"),
    ("numbers", "expected (boxes, scores, classes)"), ("NOT_CALLABLE", "not a function"),
    ("missing", "cannot be imported: AttributeError"),
])
def test_a_wrong_user_detection_decoder_is_named(decoders: str, target: str, says: str) -> None:
    m = metric("map", decode=f"{decoders}:{target}")
    assert m.corpus is not None
    outputs = np.zeros((2, 3, 6))
    with pytest.raises(MetricDataError, match=f"decoder '{decoders}:{target}'") as caught:
        m.corpus(outputs, None, outputs)
    assert says in caught.value.message


def test_an_unimportable_decoder_module_says_so() -> None:
    m = metric("map", decode="no_such_package.decoders:ssd")
    assert m.corpus is not None
    with pytest.raises(MetricDataError, match="cannot be imported: ModuleNotFoundError") as caught:
        m.corpus(np.zeros((1, 2, 6)), None, np.zeros((1, 2, 6)))
    assert "sys.path" in caught.value.hint


# --- text ---------------------------------------------------------------------------------------------------------


ALPHABET = " abcdefghijklmnopqrstuvwxyz"
SENTENCES = ["the cat sat on the mat", "a dog ran", "edge models run fast", "hello world", "certify this model",
             "no more words", "one", "quantized weights keep quality"]


def ctc_logits(texts: list[str], steps: int = 64, seed: int = 0) -> np.ndarray:
    """CTC logits [n, steps, 1 + len(ALPHABET)] spelling the texts (each character, then a blank)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.1, (len(texts), steps, len(ALPHABET) + 1))
    for i, text in enumerate(texts):
        tokens = [t for ch in text for t in (ALPHABET.index(ch) + 1, 0)]
        tokens += [0] * (steps - len(tokens))
        logits[i, np.arange(steps), tokens] += 5.0
    return logits


def test_ctc_greedy_collapses_repeats_and_drops_blanks() -> None:
    tokens = np.array([[1, 1, 0, 1, 2, 2, 0, 0, 3], [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    logits = np.eye(4)[tokens]
    assert ctc_greedy(logits, "abc") == ["aabc", ""]
    assert ctc_greedy(logits, "abc", blank=3) == ["babca", "a"]  # a blank last: token i is alphabet[i]
    assert ctc_greedy(ctc_logits(SENTENCES[:3]), ALPHABET) == SENTENCES[:3]
    with pytest.raises(MetricDataError, match=r"logits \[n, steps, 3\]"):
        ctc_greedy(logits, "ab")


def test_wer_and_cer_are_jiwer_over_the_chosen_samples_repeats_included() -> None:
    hypotheses = ["the cat sat on a mat", "a dog", "edge models run fast", "hello word", "certify this model now",
                  "no more words", "won", "quantized weights keep quality"]
    labels = np.array(SENTENCES)
    outputs = ctc_logits(hypotheses)
    wer, cer = metric("wer", alphabet=ALPHABET), metric("cer", alphabet=ALPHABET)
    assert wer.corpus is not None and cer.corpus is not None
    wer_of, cer_of = wer.corpus(outputs, labels, outputs), cer.corpus(outputs, labels, outputs)
    for indices in (np.arange(8), np.array([1, 1, 1, 6]), np.random.default_rng(0).integers(0, 8, 8)):
        refs, hyps = [SENTENCES[i] for i in indices], [hypotheses[i] for i in indices]
        assert wer_of(indices) == pytest.approx(jiwer.wer(refs, hyps))
        assert cer_of(indices) == pytest.approx(jiwer.cer(refs, hyps))


def test_wer_passes_a_close_candidate_and_fails_a_degraded_one() -> None:
    labels = np.array(SENTENCES)
    baseline = ctc_logits(["the cat sat on a mat", *SENTENCES[1:]])  # one word wrong
    close = baseline + np.random.default_rng(1).normal(0, 0.05, baseline.shape)
    degraded = ctc_logits(["the bat sat on a mat", "a dog", "edge model run fast", *SENTENCES[3:]])
    for name in ("wer", "cer"):
        m = metric(name, alphabet=ALPHABET)
        assert 0 < value(m, baseline, labels, baseline) < 0.1
        assert retention(m, close, baseline, labels) >= RETAINED
        assert retention(m, degraded, baseline, labels) < 0.8


def test_agreements_score_the_baseline_one_and_clip_at_zero() -> None:
    baseline = ctc_logits(SENTENCES)
    close = baseline + np.random.default_rng(2).normal(0, 0.05, baseline.shape)
    one_word = ctc_logits(["the cat sat on the hat", *SENTENCES[1:]])
    babble = ctc_logits(["a b c d e f g h i j k l m n o p q r s t u v w x y z a b c"] * len(SENTENCES), steps=120)
    for name in ("word_agreement", "char_agreement"):
        m = metric(name, alphabet=ALPHABET)
        assert value(m, baseline, None, baseline) == 1.0
        assert retention(m, close, baseline) >= RETAINED
        assert RETAINED <= retention(m, one_word, baseline) < 1.0
        assert value(m, babble, None, np.pad(baseline, ((0, 0), (0, 56), (0, 0)))) == 0.0
    m = metric("word_agreement", alphabet=ALPHABET)
    assert m.corpus is not None
    degraded = ctc_logits(["the cat", "a dog ran", "edge", "hello world", "this", "no", "one", "quality"])
    assert retention(m, degraded, baseline) < 0.8
    agreement = m.corpus(one_word, None, baseline)
    assert agreement(np.array([0, 0])) == pytest.approx(1 - 1 / 6) and agreement(np.array([1, 2])) == 1.0


def test_text_metrics_with_a_user_decoder(decoders: str) -> None:
    baseline = np.array([[1, 2, 3, 4, 1, 5], [2, 3, 0, 0, 0, 0]])  # "the cat sat on the mat", "cat sat"
    candidate = np.array([[1, 2, 3, 4, 1, 2], [2, 3, 0, 0, 0, 0]])  # "... the cat"
    m = metric("word_agreement", decode=f"{decoders}:Text.words")
    assert value(m, candidate, None, baseline) == pytest.approx(1 - 1 / 8)
    wer = metric("wer", decode=f"{decoders}:Text.words")
    assert value(wer, candidate, np.array(["the cat sat on the mat", "cat sat"]), baseline) == pytest.approx(1 / 8)
    bad = metric("cer", decode=f"{decoders}:numbers")
    with pytest.raises(MetricDataError, match="must return a list of 2 strings"):
        value(bad, baseline, np.array(["a", "b"]), baseline)


def test_text_metrics_refuse_missing_wrong_or_empty_references() -> None:
    outputs = ctc_logits(["abc", "de"])
    wer = metric("wer", alphabet=ALPHABET)
    assert wer.corpus is not None
    with pytest.raises(MetricDataError, match="needs the reference texts"):
        wer.corpus(outputs, None, outputs)
    with pytest.raises(MetricDataError, match="must be 2 strings"):
        wer.corpus(outputs, np.array([1, 2]), outputs)
    with pytest.raises(MetricDataError, match="every label text is empty"):
        wer.corpus(outputs, np.array(["", " "]), outputs)
    assert wer.corpus(outputs, np.array([["abc"], ["de"]]), outputs)(np.arange(2)) == 0.0  # a [n, 1] column
    empty = ctc_logits(["", ""])
    agreement = metric("char_agreement", alphabet=ALPHABET)
    assert agreement.corpus is not None
    with pytest.raises(MetricDataError, match="the baseline's decoded text is empty"):
        agreement.corpus(outputs, None, empty)


def test_an_empty_reference_counts_every_hypothesis_word_as_an_insertion() -> None:
    labels = np.array(["", "a b"])
    outputs = ctc_logits(["x y", "a b"])
    wer = metric("wer", alphabet=ALPHABET)
    assert wer.corpus is not None
    rate = wer.corpus(outputs, labels, outputs)
    assert rate(np.arange(2)) == 1.0  # 2 insertions over 2 reference words
    assert np.isnan(rate(np.array([0, 0])))  # no reference word among these: undefined, left to the caller
