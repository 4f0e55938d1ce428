"""The pure parts of optimize: fidelity maths, option parsing, sample sets, the model folder config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchrest.config import InputSpec, ModelConfig, OptimizeConfig
from torchrest.errors import StartupError
from torchrest.optimize.fidelity import compare
from torchrest.optimize.measure import measure
from torchrest.optimize.samples import sample_sets


def test_identical_answers_agree_fully() -> None:
    logits = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    fidelity = compare(logits, logits.copy())
    assert fidelity.top1_agreement == 1.0 and fidelity.top5_overlap == 1.0
    assert fidelity.max_probability_diff == 0.0 and fidelity.samples == 8


def test_swapped_top1_counts_as_disagreement() -> None:
    reference = np.array([[5.0, 1.0, 0.0, 0.0, 0.0, -9.0], [0.0, 3.0, 0.0, 0.0, 0.0, -9.0]], np.float32)
    candidate = reference.copy()
    candidate[0, [0, 1]] = candidate[0, [1, 0]]  # first input: top-1 and top-2 swap places
    fidelity = compare(reference, candidate)
    assert fidelity.top1_agreement == 0.5
    assert fidelity.top5_overlap == 1.0  # the same five classes lead, in another order
    assert fidelity.top1_disagreement == 0.5
    assert fidelity.max_probability_diff > 0.9


def test_top5_overlap_counts_shared_classes() -> None:
    reference = np.arange(10, dtype=np.float32)[None, :]  # top-5: 9 8 7 6 5
    candidate = reference[:, ::-1].copy()  # top-5: 0 1 2 3 4
    assert compare(reference, candidate).top5_overlap == 0.0


def test_answers_of_another_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros((2, 10)), np.zeros((2, 9)))


@pytest.mark.parametrize(("text", "bound"), [("1%", 0.01), ("0.5%", 0.005), ("0.02", 0.02), ("100%", 1.0)])
def test_disagreement_bound_parses_percent_or_fraction(text: str, bound: float) -> None:
    assert OptimizeConfig(max_top1_disagreement=text).disagreement_bound() == pytest.approx(bound)


@pytest.mark.parametrize("text", ["", "abc", "150%", "-1%"])
def test_bad_disagreement_bound_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="max-top1-disagreement"):
        OptimizeConfig(max_top1_disagreement=text).disagreement_bound()


def test_batch_sizes_are_sorted_and_unique() -> None:
    assert OptimizeConfig(batch_sizes="8, 1,2,8").batch_size_list() == [1, 2, 8]
    with pytest.raises(ValueError):
        OptimizeConfig(batch_sizes="0,4").batch_size_list()


def test_measure_reports_each_batch_size_and_batch1_latency() -> None:
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros((len(batch), 3), np.float32)

    speed = measure(run, np.zeros((3, 4, 4, 3), np.uint8), [2, 8], seconds_per_point=0.01)
    assert set(speed.throughput) == {2, 8} and speed.latency_bs1_ms > 0
    assert {1, 2, 8} <= set(calls)  # batch 1 is timed for latency even when not in the list
    assert speed.best_batch_size in (2, 8)


def photo_folder(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 255, (60 + index, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{index:02d}.png")
    return folder


def test_few_photos_give_disjoint_random_views(tmp_path: Path) -> None:
    sets = sample_sets(photo_folder(tmp_path / "few", 3), InputSpec(32, 36), 10, 20)
    assert sets.calibration.shape == (10, 32, 32, 3) and sets.held_out.shape == (20, 32, 32, 3)
    assert sets.calibration.dtype == np.uint8 and sets.photos == 3
    assert "different random views" in sets.split
    # the first views are the photos as the server sees them; the random views that follow differ by seed
    assert np.array_equal(sets.calibration[:3], sets.held_out[:3])
    assert not np.array_equal(sets.calibration[3:10], sets.held_out[3:10])


def test_many_photos_hold_one_in_five_out_whole(tmp_path: Path) -> None:
    sets = sample_sets(photo_folder(tmp_path / "many", 10), InputSpec(32, 36), 16, 8)
    assert sets.split.startswith("2 of 10 photos held out whole")
    calibration_rows = {row.tobytes() for row in sets.calibration[:8]}
    assert not calibration_rows & {row.tobytes() for row in sets.held_out[:2]}


def test_missing_calibration_folder(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        sample_sets(tmp_path / "nowhere", InputSpec(), 4, 4)


def test_model_config_round_trips(tmp_path: Path) -> None:
    config = ModelConfig(
        name="m",
        backend="onnxruntime",
        artifact="1/model.onnx",
        precision="int8",
        crop_size=224,
        resize_size=256,
        batch_sizes=(1, 4),
        backend_options={"inference_precision": "fp32"},
    )
    path = tmp_path / "config.json"
    config.write(path)
    assert ModelConfig.read(path) == config


def test_model_config_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"name": "m"}')
    with pytest.raises(ValueError, match="lacks backend, artifact"):
        ModelConfig.read(path)
