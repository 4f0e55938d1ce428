"""The tasks' own parts, without a server: fitting an image into the input and mapping answers back, NMS
against the textbook greedy loop, binding a model's outputs to its tasks, the mask's PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from torchrest.errors import InvalidModelOutput, ModelLoadError
from torchrest.model_input import InputSpec
from torchrest.resize import fit_into
from torchrest.tasks.base import Answer, Geometry
from torchrest.tasks.detect import DetectOptions, suppressed_boxes
from torchrest.tasks.registry import Heads, output_shapes
from torchrest.tasks.segment import SegmentHead, original_mask, pixel_counts, png


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float) -> list[int]:
    """The textbook loop, one box at a time (what torchvision's batched_nms computes)."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for index in order:
        if not np.isfinite(scores[index]):
            continue
        box = boxes[index]
        suppressed = False
        for other in kept:
            if classes[other] != classes[index]:
                continue
            ox = max(0.0, min(box[2], boxes[other][2]) - max(box[0], boxes[other][0]))
            oy = max(0.0, min(box[3], boxes[other][3]) - max(box[1], boxes[other][1]))
            inter = ox * oy
            union = (
                (box[2] - box[0]) * (box[3] - box[1])
                + (boxes[other][2] - boxes[other][0]) * (boxes[other][3] - boxes[other][1])
                - inter
            )
            if inter / max(union, 1e-9) > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(int(index))
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_keeps_what_the_greedy_loop_keeps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, count = 4, 200
    corners = rng.uniform(0, 200, (images, count, 2)).astype(np.float32)
    sizes = rng.uniform(5, 60, (images, count, 2)).astype(np.float32)
    boxes = np.concatenate((corners, corners + sizes), axis=2)
    scores = rng.uniform(0, 1, (images, count)).astype(np.float32)
    scores[:, -20:] = -np.inf  # not candidates
    classes = rng.integers(0, 3, (images, count))
    thresholds = [0.3, 0.45, 0.6, 0.5]
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_boxes = np.take_along_axis(boxes, order[..., None], axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_classes = np.take_along_axis(classes, order, axis=1)
    options = [DetectOptions(0.0, threshold, 1000) for threshold in thresholds]
    kept = suppressed_boxes(
        torch.from_numpy(sorted_boxes), torch.from_numpy(sorted_scores), torch.from_numpy(sorted_classes), options
    ).numpy()
    for image, threshold in enumerate(thresholds):
        expected = greedy_nms(boxes[image], scores[image], classes[image], threshold)
        assert sorted(order[image][kept[image]].tolist()) == sorted(expected)


def dense_outputs(boxes: list[list[float]], scores: list[list[float]], anchors: int = 16) -> np.ndarray:
    """One image's dense output (4 + C, A) from x1y1x2y2 boxes and per-class scores, padded to `anchors`
    with boxes that score 0 for every class (a real head has far more anchors than rows)."""
    rows = []
    for (x1, y1, x2, y2), classes in zip(boxes, scores, strict=True):
        rows.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, *classes])
    rows += [[1.0, 1.0, 1.0, 1.0, *[0.0] * len(scores[0])]] * (anchors - len(rows))
    return np.array(rows, np.float32).T


def test_dense_detections_are_thresholded_suppressed_and_capped_per_image() -> None:
    image = dense_outputs(
        [[10, 10, 50, 50], [11, 11, 51, 51], [100, 100, 140, 140], [12, 12, 52, 52], [0, 0, 5, 5]],
        [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.0, 0.6], [0.2, 0.0]],
    )
    heads = Heads.bind(["detect"], output_shapes([image[None]]), (640, 640))
    batch = np.stack([image, image])
    answers = heads.decode([batch], ["detect", "detect"], [DetectOptions(), DetectOptions(0.65, 0.45, 1)])
    first, second = answers
    assert isinstance(first, tuple) and isinstance(second, tuple)
    # the second box overlaps the first of its class (suppressed); the fourth overlaps it but is another class
    np.testing.assert_allclose(first[0][:, 5], [0, 1, 1])
    np.testing.assert_allclose(first[0][:, 4], [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(first[0][0, :4], [10, 10, 50, 50])
    np.testing.assert_allclose(second[0][:, 4], [0.9], rtol=1e-6)  # its own threshold and cap


def test_end_to_end_rows_are_thresholded_ranked_and_capped_without_nms() -> None:
    # (N, K, 6) x1, y1, x2, y2, score, class as YOLO26 exports them: NMS is the model's, overlaps stand
    rows = np.array(
        [
            [10, 10, 50, 50, 0.5, 3],
            [11, 11, 51, 51, 0.9, 3],  # overlaps the first, same class: kept (no NMS here)
            [0, 0, 5, 5, 0.1, 1],  # under the default threshold
            [0, 0, 0, 0, 0.0, 0],  # padding
            [60, 60, 90, 90, 0.7, 2],
        ]
        + [[0, 0, 0, 0, 0.0, 0]] * 3,
        np.float32,
    )
    heads = Heads.bind(["detect"], output_shapes([rows[None]]), (640, 640))
    assert heads.describe() == {"detect": {"layout": "end-to-end", "rows": 8}}
    broken = rows.copy()
    broken[1, 0] = np.nan  # an answer's box: the image fails alone
    options = [DetectOptions(), DetectOptions(0.6, 0.45, 1), DetectOptions()]
    first, capped, bad = heads.decode([np.stack([rows, rows, broken])], ["detect"] * 3, options)
    assert isinstance(first, tuple) and isinstance(capped, tuple) and isinstance(bad, InvalidModelOutput)
    np.testing.assert_allclose(first[0][:, 4], [0.9, 0.7, 0.5], rtol=1e-6)
    np.testing.assert_allclose(first[0][:, 5], [3, 2, 3])
    np.testing.assert_allclose(first[0][0, :4], [11, 11, 51, 51])
    np.testing.assert_allclose(capped[0][:, 4], [0.9], rtol=1e-6)  # its own threshold and cap
    # (6, A) stays the dense layout (4 + 2 classes over A candidates)
    assert Heads.bind(["detect"], [(6, 8400)], (640, 640)).describe()["detect"]["layout"] == "dense"


def test_an_image_whose_outputs_hold_nan_fails_alone() -> None:
    image = dense_outputs([[10, 10, 50, 50]], [[0.9, 0.0]])
    broken = image.copy()
    broken[0, 0] = np.nan
    heads = Heads.bind(["detect"], output_shapes([image[None]]), (64, 64))
    good, bad = heads.decode([np.stack([image, broken])], ["detect"] * 2, [DetectOptions()] * 2)
    assert isinstance(good, tuple) and len(good[0]) == 1
    assert isinstance(bad, InvalidModelOutput)


def test_outputs_that_do_not_fit_the_task_are_one_line_naming_both() -> None:
    with pytest.raises(ModelLoadError, match=r"task detect expects .* found \(N, 1000\)"):
        Heads.bind(["detect"], [(1000,)], (224, 224))
    with pytest.raises(ModelLoadError, match=r"task segment expects .* output 0 is \(N, 1000\)"):
        Heads.bind(["segment"], [(1000,)], (224, 224))
    with pytest.raises(ModelLoadError, match=r"task embed expects an output of shape \(N, D\); output 1 is missing"):
        Heads.bind(["classify", "embed"], [(1000,)], (224, 224))
    heads = Heads.bind(["classify", "embed"], [(1000,), (1280,)], (224, 224))
    assert heads.tasks == ("classify", "embed")


@pytest.mark.parametrize("resize", ["letterbox", "stretch", "crop"])
def test_boxes_come_back_in_the_original_pixels(resize: str) -> None:
    """A rectangle drawn on a 900 x 600 image, fitted into 320 x 320, found in the input, mapped back."""
    upright = np.full((600, 900, 3), 128, np.uint8)
    upright[200:400, 300:700] = 255
    spec = InputSpec(320, 366, resize=resize)
    out = np.zeros((320, 320, 3), np.uint8)
    geometry = fit_into(upright, spec, out, (900, 600))
    white = np.argwhere(out.min(axis=2) > 200)
    (y1, x1), (y2, x2) = white.min(axis=0), white.max(axis=0) + 1
    back = geometry.boxes_to_original(np.array([[x1, y1, x2, y2]], np.float32))[0]
    tolerance = 2 / min(geometry.scale_x, geometry.scale_y)
    # every mode keeps the whole rectangle (the crop keeps x from about 187 to 712 of the original)
    np.testing.assert_allclose(back, [300, 200, 700, 400], atol=tolerance)
    if resize == "letterbox":
        assert out[0, 0].tolist() == [114, 114, 114]  # the padding's grey
        assert geometry.top > 0 and geometry.left == 0


def test_a_mask_maps_back_to_every_original_pixel() -> None:
    """A class map at half the input's resolution, for a letterboxed 900 x 600 image."""
    geometry = Geometry(900, 600, 320 / 900, 320 / 900, 0.0, (320 - round(600 * 320 / 900)) // 2)
    small = np.zeros((160, 160), np.uint8)
    top = int(geometry.top / 2)
    small[top : top + 20, 10:30] = 3  # in the input: rows top..top+40, columns 20..60
    head = SegmentHead(0, 4, (320, 320))
    mask = original_mask(Answer(small, -1, geometry), head)
    assert mask.shape == (600, 900)
    counted = pixel_counts(Answer(small, -1, geometry), head)
    np.testing.assert_array_equal(counted, np.bincount(mask.reshape(-1), minlength=4))
    ys, xs = np.nonzero(mask == 3)
    np.testing.assert_allclose([xs.min(), xs.max() + 1], [20 / geometry.scale_x, 60 / geometry.scale_x], atol=3)
    np.testing.assert_allclose([ys.min(), ys.max() + 1], [0, 40 / geometry.scale_y], atol=3)


def test_the_mask_png_holds_the_class_ids() -> None:
    mask = np.arange(600, dtype=np.uint16).reshape(20, 30) % 300
    for kind in (np.uint8, np.uint16):
        values = mask.astype(kind) if kind == np.uint16 else (mask % 200).astype(kind)
        image = Image.open(io.BytesIO(png(values)))
        assert image.mode == ("L" if kind == np.uint8 else "I;16")
        np.testing.assert_array_equal(np.asarray(image).astype(np.int64), values.astype(np.int64))
