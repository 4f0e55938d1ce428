"""obb, rotated boxes: their overlap (ProbIoU), class-aware rotated NMS over a batch, the end-to-end layout,
the boxes mapped back to the original image (letterbox undone, angles kept), the layouts told apart, and
`--resize stretch` refused in one line. In process: the heads and the answer are the task's own code."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import torch

from tests.helpers import assert_one_line_failure, run_cli
from torchrest.errors import InvalidModelOutput, ModelLoadError
from torchrest.tasks import Answer, Geometry
from torchrest.tasks.detect import DetectOptions
from torchrest.tasks.obb import Obb, corners, probiou
from torchrest.tasks.registry import Heads, output_shapes


def boxes(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float32)


def test_probiou_is_one_for_the_same_box_and_falls_with_distance_and_turn() -> None:
    square = (50.0, 50.0, 20.0, 20.0, 0.0)
    same = probiou(boxes(square), boxes(square, (50, 50, 20, 20, math.pi / 2), (50, 50, 20, 20, math.pi / 4)))
    np.testing.assert_allclose(same[0, 0, :2], [1.0, 1.0], atol=1e-3)  # a square turned a quarter is itself
    assert same[0, 0, 2] > 0.95  # and a round-ish Gaussian: 45 degrees changes nothing for a square
    near, far = probiou(boxes(square), boxes((55, 50, 20, 20, 0.0), (150, 50, 20, 20, 0.0)))[0, 0]
    assert 0.5 < near < 0.99 and far < 0.01
    bar = (50.0, 50.0, 40.0, 4.0, 0.0)
    crossed = probiou(boxes(bar), boxes((50, 50, 40, 4, math.pi / 2)))[0, 0, 0]
    assert crossed < 0.3  # a thin bar and the same bar turned upright barely overlap


def dense(rows: list[tuple[float, ...]], anchors: int = 16) -> np.ndarray:
    """(4 + C + 1, A) for candidates (cx, cy, w, h, score_0 .. score_C-1, angle); the rest empty."""
    width = len(rows[0])
    table = np.zeros((anchors, width), np.float32)
    table[: len(rows)] = rows
    table[len(rows) :, 2:4] = 1.0
    return table.T


def test_dense_rotated_nms_is_class_aware_per_image_with_each_images_options() -> None:
    image = dense(
        [
            (100, 100, 60, 20, 0.9, 0.0, 0.3),
            (101, 100, 60, 20, 0.8, 0.0, 0.31),  # the first again, a pixel over: suppressed
            (101, 100, 60, 20, 0.0, 0.7, 0.31),  # the same place, another class: kept
            (300, 200, 40, 40, 0.6, 0.0, 1.0),
            (10, 10, 5, 5, 0.1, 0.0, 0.0),  # under the threshold
        ]
    )
    heads = Heads.bind(["obb"], output_shapes([image[None]]), (640, 640))
    assert heads.describe() == {"obb": {"layout": "dense", "classes": 2, "candidates": 16}}
    broken = image.copy()
    broken[-1, 0] = np.nan  # an answer's angle
    options = [DetectOptions(), DetectOptions(0.65, 0.45, 1), DetectOptions()]
    first, capped, bad = heads.decode([np.stack([image, image, broken])], ["obb"] * 3, options)
    assert isinstance(first, tuple) and isinstance(capped, tuple) and isinstance(bad, InvalidModelOutput)
    np.testing.assert_allclose(first[0][:, 5], [0.9, 0.7, 0.6], rtol=1e-6)  # cx, cy, w, h, angle, score, class
    np.testing.assert_allclose(first[0][:, 6], [0, 1, 0])
    np.testing.assert_allclose(first[0][0, :5], [100, 100, 60, 20, 0.3], rtol=1e-6)
    np.testing.assert_allclose(capped[0][:, 5], [0.9], rtol=1e-6)


def test_end_to_end_rows_are_thresholded_and_ranked_without_nms() -> None:
    rows = np.zeros((10, 7), np.float32)
    rows[:3] = [(100, 100, 60, 20, 0.5, 2, 0.3), (101, 100, 60, 20, 0.9, 2, 0.3), (5, 5, 2, 2, 0.1, 0, 0)]
    heads = Heads.bind(["obb"], output_shapes([rows[None]]), (640, 640))
    assert heads.describe() == {"obb": {"layout": "end-to-end", "rows": 10}}
    ((answer, _),) = heads.decode([rows[None]], ["obb"], [DetectOptions()])  # type: ignore[misc]
    np.testing.assert_allclose(answer[:, 5], [0.9, 0.5], rtol=1e-6)  # overlapping, both kept: no NMS
    np.testing.assert_allclose(answer[0], [101, 100, 60, 20, 0.3, 0.9, 2], rtol=1e-6)


def test_boxes_come_back_in_the_original_pixels_with_their_angle() -> None:
    # a 1280 x 640 photo letterboxed into 640 x 640: half the size, 160 pixels of padding above
    geometry = Geometry(1280, 640, 0.5, 0.5, 0.0, 160.0)
    rows = np.array([[320, 320, 100, 50, 0.5, 0.9, 1]], np.float32)
    body, kind = Obb().http_body(Answer(rows, -1, geometry), DetectOptions(), None, ["car", "ship"], "m", "")
    (found,) = orjson.loads(body)["detections"]
    assert kind == "application/json" and found["label"] == "ship" and found["confidence"] == pytest.approx(0.9)
    assert found["box"] == {"center": [640.0, 320.0], "size": [200.0, 100.0], "angle": 0.5}
    expected = corners(np.array([[640, 320, 200, 100, 0.5]], np.float32))[0]
    np.testing.assert_allclose(found["corners"], expected, atol=0.01)
    centre = np.mean(found["corners"], axis=0)
    np.testing.assert_allclose(centre, [640, 320], atol=0.01)
    edge = np.subtract(found["corners"][1], found["corners"][0])
    assert math.atan2(edge[1], edge[0]) == pytest.approx(0.5, abs=1e-4)
    assert np.hypot(*edge) == pytest.approx(200, abs=0.01)


def test_layouts_that_do_not_fit_and_a_stretched_fit_are_one_line() -> None:
    with pytest.raises(ModelLoadError, match=r"task obb expects .* output 0 is \(N, 1000\)"):
        Heads.bind(["obb"], [(1000,)], (640, 640))
    refused = run_cli("serve", "--model", "nowhere.onnx", "--task", "obb", "--resize", "stretch", "--port", "0")
    assert_one_line_failure(refused, "task obb cannot use --resize stretch: it would skew the boxes' angles")


def test_optimize_judges_rotated_boxes_by_detects_gate_with_probiou() -> None:
    from torchrest.optimize.gates import Gate

    image = dense([(100, 100, 60, 20, 0.9, 0.0, 0.3), (300, 200, 40, 40, 0.0, 0.8, 1.0)])
    heads = Heads.bind(["obb"], output_shapes([image[None]]), (640, 640))
    gate = Gate(heads)
    reference = gate.answers((np.stack([image, image]),))
    turned = image.copy()
    turned[-1, 0] += 0.6  # the thin box turned a third of a right angle: its ProbIoU with fp32's falls
    same, moved = (
        gate.judge(reference, gate.answers((np.stack([image, image]),))),
        gate.judge(reference, gate.answers((np.stack([image, turned]),))),
    )
    assert [(v.task, v.measure, v.passed, v.value) for v in same] == [("obb", "box match", True, 1.0)]
    (verdict,) = moved
    assert not verdict.passed and verdict.value == 0.75 and verdict.reason.startswith("boxes matched (IoU >= 0.9)")
    assert verdict.details["extra_boxes"] == 0.25  # the turned box, unmatched
