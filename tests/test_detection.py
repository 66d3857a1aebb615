"""Detection and decoded-output metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from nabn_onnx.errors import DataError, NabnError
from nabn_onnx.evaluation.decoders import DECODERS, PicoDetDecoder, nms, register_decoder
from nabn_onnx.evaluation.detection import DetectionMetrics, average_precision, box_iou, match_image
from nabn_onnx.evaluation.metrics import DecodedMetric, make_metric, make_metrics

TOL = 1e-9


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]])
    # overlap 25 / union 175; identical; disjoint; half contained: 50 / 100.
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 1.0, 0.0, 0.5]], atol=TOL)


def test_match_image_greedy_by_score_and_each_truth_once():
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 0, 30, 9], [50, 50, 60, 60]])
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    # The 0.95 box (IoU 0.9) takes truth 0 first, so the exact 0.9 box is a duplicate (false positive).
    np.testing.assert_array_equal(match_image(boxes, scores, truth, 0.5), [False, True, True, False])


def test_average_precision_hand_computed():
    # Ranked: TP, FP, TP with 3 truths: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    # Monotone envelope: 1 on (0, 1/3], 2/3 on (1/3, 2/3], nothing beyond: AP = 1/3 + 2/9.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    assert ap == pytest.approx(1 / 3 + 2 / 9, abs=TOL)
    assert average_precision(np.array([]), np.array([], dtype=bool), 2) == 0.0


def test_detection_metrics_stream_over_batches_and_classes():
    labels = np.full((2, 2, 5), -1, dtype=np.float32)
    labels[0, 0] = (0, 0, 0, 10, 10)
    labels[0, 1] = (1, 20, 20, 40, 40)
    labels[1, 0] = (0, 0, 0, 10, 10)
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.3, 0], [21, 21, 40, 40, 0.8, 1]]), np.zeros((0, 6))]
    metric = DetectionMetrics()
    metric.update(dets[:1], labels[:1])
    metric.update(dets[1:], labels[1:])
    # Class 0: 2 truths, TP (0.9) then FP (0.3): AP = 1 * 1/2 = 0.5, AR = 1/2. Class 1: AP = AR = 1.
    assert metric.result() == pytest.approx({"map50": 0.75, "mar50": 0.75}, abs=TOL)
    per_class = metric.per_class()
    assert per_class[0]["ap"] == pytest.approx(0.5) and per_class[1]["truth"] == 1


def test_map_and_mar_names_and_iou_threshold():
    labels = np.array([[[0, 0, 0, 10, 10]]], dtype=np.float32)
    dets = [np.array([[0, 0, 10, 6, 0.9, 0]])]  # IoU 0.6 with the truth
    for name, expected in (("map50", 1.0), ("mar50", 1.0), ("map75", 0.0), ("mar75", 0.0)):
        metric = make_metric(name)
        metric.update(dets, labels)
        assert metric.name == name and metric.result() == pytest.approx(expected)


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=float)
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9, 0.4]), 0.5), [1, 2])


def _picodet_outputs(height=64, width=32, classes=3, bins=8):
    """Raw PicoDet head outputs with one confident anchor whose box is known exactly."""
    strides = (8, 16, 32, 64)
    scores, dists = [], []
    for s in strides:
        count = -(-height // s) * -(-width // s)
        scores.append(np.zeros((1, count, classes), np.float32))
        dists.append(np.full((1, count, 4 * bins), -50.0, np.float32))
    # Stride 8, anchor row 2, column 1: center (12, 20); distances 1, 2, 3, 0 bins of 8 px.
    cols = width // 8
    anchor = 2 * cols + 1
    scores[0][0, anchor, 2] = 0.8
    for side, bin_index in enumerate((1, 2, 3, 0)):
        dists[0][0, anchor, side * bins + bin_index] = 50.0
    return scores + dists


def test_picodet_decoder_recovers_a_known_box():
    decoder = PicoDetDecoder(input_size=(64, 32))
    (dets,) = decoder(_picodet_outputs())
    assert dets.shape == (1, 6)
    # x1 = 12 - 8, y1 = 20 - 16, x2 = 12 + 24, clipped to the width 32, y2 = 20 + 0.
    np.testing.assert_allclose(dets[0], [4, 4, 32, 20, 0.8, 2], atol=1e-4)


def test_picodet_decoder_rejects_wrong_outputs():
    with pytest.raises(DataError, match="8 outputs"):
        PicoDetDecoder()(np.zeros((1, 5, 3)))
    with pytest.raises(DataError, match="do not fit"):
        PicoDetDecoder(input_size=(800, 608))(_picodet_outputs())


def test_dbnet_decoder_gives_binary_iou_with_background():
    prob = np.array([[[[0.1, 0.4], [0.9, 0.2]]]], dtype=np.float32)
    mask = np.array([[[0, 1], [0, 0]]], dtype=np.int64)
    metrics = make_metrics("dbnet:miou,dbnet:pixel-acc")
    for m in metrics.values():
        m.update(prob, mask)
    # Predicted text: (0,1) right and (1,0) a false alarm. Text IoU 1/2, background IoU 2/3.
    assert metrics["dbnet:miou"].result() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics["dbnet:pixel-acc"].result() == pytest.approx(3 / 4)
    assert make_metric("dbnet").name == "dbnet:miou"


def test_decoded_metric_plugin_by_object_and_by_registered_name():
    class Halves:
        name, default_metric, all_outputs = "halves", "top1", True

        def __call__(self, outputs):
            return outputs[0] + outputs[1]

    metric = DecodedMetric(Halves())
    metric.update([np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])], np.array([1]))
    assert metric.result() == 1.0 and metric.all_outputs
    register_decoder("halves", Halves)
    try:
        assert make_metric("halves:top1").name == "halves:top1"
    finally:
        DECODERS.pop("halves")
    with pytest.raises(NabnError, match="unknown metric"):
        make_metric("nodecoder:map50")


def test_evaluator_feeds_every_output_to_a_decoder_that_asks_for_them():
    import onnx
    from onnx import TensorProto, helper

    from nabn_onnx.evaluation import Evaluator

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["first"]), helper.make_node("Neg", ["x"], ["second"])],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("first", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)

    class Second:
        name, default_metric, all_outputs = "second", "top1", True

        def __call__(self, outputs):
            assert len(outputs) == 2
            return outputs[1]

    x = np.array([[0.0, 1.0, 2.0], [5.0, 1.0, 0.0], [1.0, 0.0, 3.0]], dtype=np.float32)
    labels = np.array([2, 2, 1])  # argmax of x: 2, 0, 2 (1 of 3); argmax of -x: 0, 2, 1 (2 of 3)
    result = Evaluator(model).run({"x": x, "labels": labels}, ["top1", DecodedMetric(Second())], batch_size=2).value
    assert result == pytest.approx({"top1": 1 / 3, "second:top1": 2 / 3})
