"""Metrics against hand-computed values, streaming equivalence, and the evaluate entry points."""

from __future__ import annotations

import numpy as np
import pytest

from nabn_onnx import DataError, NabnError, evaluate
from nabn_onnx.cli import main
from nabn_onnx.evaluation.evaluate import Evaluator
from nabn_onnx.evaluation.metrics import MeanIoU, PixelAccuracy, TopK, make_metric, make_metrics

from builders import images, small_cnn

EXACT = 1e-12

LOGITS = np.array(
    [
        [0.1, 0.5, 0.2, 0.9],  # ranking 3, 1, 2, 0
        [0.8, 0.1, 0.3, 0.0],  # ranking 0, 2, 1, 3
        [0.2, 0.3, 0.4, 0.1],  # ranking 2, 1, 0, 3
        [0.0, 0.0, 1.0, 2.0],  # ranking 3, 2, ...
    ]
)
LABELS = np.array([3, 2, 0, 2])


def test_top1_and_top2_by_hand():
    top1, top2 = TopK(1), TopK(2)
    for m in (top1, top2):
        m.update(LOGITS, LABELS)
    assert top1.result() == pytest.approx(1 / 4, abs=EXACT)  # only sample 0
    assert top2.result() == pytest.approx(3 / 4, abs=EXACT)  # samples 0, 1, 3


def test_topk_streams_like_one_batch():
    one, streamed = TopK(2), TopK(2)
    one.update(LOGITS, LABELS)
    for i in range(len(LABELS)):
        streamed.update(LOGITS[i : i + 1], LABELS[i : i + 1])
    assert streamed.result() == one.result()


def test_topk_rejects_bad_labels_and_shapes():
    with pytest.raises(DataError, match="outside"):
        TopK(1).update(LOGITS, np.array([0, 1, 2, 9]))
    with pytest.raises(DataError, match="needs labels"):
        TopK(1).update(LOGITS, None)
    with pytest.raises(DataError, match="at least 5 classes"):
        TopK(5).update(LOGITS, LABELS)


# One 1x2x3 label map and 3-class logits whose argmax is PRED.
SEG_LABELS = np.array([[[0, 1, 1], [2, 255, 0]]])
PRED = np.array([[[0, 1, 2], [2, 1, 1]]])


def _seg_logits(pred: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.moveaxis(np.eye(classes)[pred], -1, 1)


def test_segmentation_by_hand():
    logits = _seg_logits(PRED)
    # Counted pixels (label != 255): (0->0), (1->1), (1->2), (2->2), (0->1).
    keep_bg = PixelAccuracy()
    keep_bg.update(logits, SEG_LABELS)
    assert keep_bg.result() == pytest.approx(3 / 5, abs=EXACT)
    # Confusion rows=label: class 0: tp 1, fn 1, fp 0 -> 1/2; class 1: tp 1, fn 1, fp 1 -> 1/3;
    # class 2: tp 1, fn 0, fp 1 -> 1/2.
    all_classes = MeanIoU(ignore_background=False)
    all_classes.update(logits, SEG_LABELS)
    assert all_classes.result() == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3, abs=EXACT)
    # Paper: background pixels dropped -> (1->1), (1->2), (2->2): class 1: 1/(1+1) = 1/2;
    # class 2: 1/(1+1) = 1/2; class 0 left out of the mean.
    paper = MeanIoU()
    paper.update(logits, SEG_LABELS)
    assert paper.result() == pytest.approx(1 / 2, abs=EXACT)
    no_bg_acc = PixelAccuracy(ignore_background=True)
    no_bg_acc.update(logits, SEG_LABELS)
    assert no_bg_acc.result() == pytest.approx(2 / 3, abs=EXACT)


def test_ignore_index_none_counts_every_label():
    labels = np.array([[[0, 1], [2, 2]]])
    metric = PixelAccuracy(ignore_index=None)
    metric.update(_seg_logits(np.array([[[0, 1], [2, 0]]])), labels)
    assert metric.result() == pytest.approx(3 / 4, abs=EXACT)
    with pytest.raises(DataError, match="outside"):
        PixelAccuracy(ignore_index=None).update(_seg_logits(PRED), SEG_LABELS)  # 255 now counts


def test_segmentation_streams_like_one_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4, 5, 5))
    labels = rng.integers(0, 4, (6, 5, 5))
    labels[0, 0, :] = 255
    one, streamed = MeanIoU(), MeanIoU()
    one.update(logits, labels)
    for i in range(0, 6, 2):
        streamed.update(logits[i : i + 2], labels[i : i + 2])
    assert streamed.result() == pytest.approx(one.result(), abs=EXACT)


def test_make_metric_names_objects_and_callables():
    assert isinstance(make_metric("top5"), TopK) and make_metric("top5").k == 5
    assert make_metric("miou", ignore_background=False).ignore_background is False
    with pytest.raises(NabnError, match="unknown metric"):
        make_metric("accuracy")
    used = TopK(1)
    used.update(LOGITS, LABELS)
    fresh = make_metric(used)
    assert fresh is not used and fresh.total == used.total  # a copy, the caller's object untouched
    adapted = make_metric(lambda out, lab: float((out.argmax(1) == lab).mean()))
    adapted.update(LOGITS[:2], LABELS[:2])  # 1/2
    adapted.update(LOGITS[2:], LABELS[2:])  # 0/2
    assert adapted.result() == pytest.approx(1 / 4, abs=EXACT)
    assert list(make_metrics("top1,top2")) == ["top1", "top2"]


def _labelled(n: int = 40):
    model = small_cnn(seed=3)
    x = images(n, seed=4)
    logits = Evaluator(model).session.run(None, {"input": x})[0]
    return model, x, logits


def test_evaluate_matches_numpy_and_output_selection():
    model, x, logits = _labelled()
    labels = np.argsort(-logits, axis=1)[:, 1]  # the runner-up: top1 = 0, top2 = 1
    data = {"input": x, "labels": labels}
    assert evaluate(model, data, "top1", batch_size=7) == 0.0
    assert evaluate(model, data, ["top1", "top2"], batch_size=7) == {"top1": 0.0, "top2": 1.0}
    assert evaluate(model, data, output="logits") == evaluate(model, data, output=0)
    with pytest.raises(NabnError, match="no output named"):
        evaluate(model, data, output="nope")


def test_overridable_weights_change_the_result_only_when_fed():
    model, x, logits = _labelled()
    data = {"input": x, "labels": logits.argmax(1)}
    evaluator = Evaluator(model, overridable=["fc_b"])
    assert evaluator.run(data).value == 1.0
    bias = np.zeros(10, np.float32)
    bias[0] = 1e6  # every sample becomes class 0
    expected = float(np.mean(logits.argmax(1) == 0))
    assert evaluator.run(data, feeds={"fc_b": bias}).value == pytest.approx(expected, abs=EXACT)
    assert evaluator.run(data).value == 1.0
    with pytest.raises(NabnError, match="cannot feed"):
        evaluator.run(data, feeds={"w1": bias})


def test_cli_evaluate(tmp_path, capsys):
    model, x, logits = _labelled()
    import onnx

    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "test.npz", input=x, labels=logits.argmax(1))
    assert (
        main(["evaluate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "test.npz"), "--metric", "top1,top5"]) == 0
    )
    assert "top1 100.00%, top5 100.00% on 40 samples" in capsys.readouterr().out
    np.savez(tmp_path / "nolabels.npz", input=x)
    assert main(["evaluate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "nolabels.npz")]) == 1
    err = capsys.readouterr().err
    assert "needs labels" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "test.npz"), "--crop", "8"]) == 1
    assert "image folders only" in capsys.readouterr().err


def _segmenter():
    """A 1x1 Conv from 1 channel to 3 class maps: class scores (x, 0.5, 1 - x) for pixel value x."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([1.0, 0.0, -1.0], np.float32).reshape(3, 1, 1, 1), "w")
    bias = numpy_helper.from_array(np.array([0.0, 0.5, 1.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["maps"], name="head")],
        "segmenter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_evaluate_segmentation_against_numpy():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (6, 1, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 3, (6, 4, 4))
    labels[:, 0, 0] = 255
    predicted = np.stack([x[:, 0], np.full_like(x[:, 0], 0.5), 1 - x[:, 0]], 1).argmax(1)
    counted = labels != 255
    data = {"input": x, "labels": labels}
    expected_acc = float(np.mean(predicted[counted] == labels[counted]))
    foreground = counted & (labels != 0)
    ious = []
    for c in (1, 2):
        tp = np.sum((predicted == c) & (labels == c) & foreground)
        union = np.sum(((predicted == c) | (labels == c)) & foreground)
        ious.append(tp / union)
    result = evaluate(_segmenter(), data, ["miou", "pixel-acc"], batch_size=4)
    assert result["pixel-acc"] == pytest.approx(expected_acc, abs=EXACT)
    assert result["miou"] == pytest.approx(np.mean(ious), abs=EXACT)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        evaluate(small_cnn(), {"input": images(4), "labels": np.zeros(4, np.int64)}, "miou")
