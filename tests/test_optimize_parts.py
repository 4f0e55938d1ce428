"""The pure parts of optimize: fidelity maths and each task's gate, option parsing, sample sets, the model
folder config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchrest.config import OptimizeConfig
from torchrest.errors import StartupError
from torchrest.model_input import InputSpec, input_spec
from torchrest.models.repository import ModelConfig
from torchrest.optimize.gates import Gate
from torchrest.optimize.measure import measure
from torchrest.optimize.samples import sample_sets
from torchrest.tasks.classify import DISAGREEMENT, compare
from torchrest.tasks.detect import box_agreement
from torchrest.tasks.embed import embedding_agreement
from torchrest.tasks.registry import Heads, tasks_named


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
    assert DISAGREEMENT.parse(text) == pytest.approx(bound)


@pytest.mark.parametrize("text", ["", "abc", "150%", "-1%"])
def test_bad_disagreement_bound_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="max-top1-disagreement"):
        DISAGREEMENT.parse(text)


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


# --- each task's gate (torchrest.optimize.gates) ----------------------------------------------------


def boxes(*rows: tuple[float, ...]) -> np.ndarray:
    """(K, 6) x1, y1, x2, y2, score, class."""
    return np.array(rows, np.float32).reshape(-1, 6)


def test_identical_boxes_match_fully() -> None:
    image = boxes((10, 10, 50, 50, 0.9, 0), (60, 60, 90, 100, 0.8, 2))
    assert box_agreement([image, boxes()], [image.copy(), boxes()], 0.9) == (1.0, 0.0, 2)


def test_a_moved_box_a_relabelled_box_and_an_extra_box_count_against() -> None:
    reference = [boxes((10, 10, 50, 50, 0.9, 0), (60, 60, 100, 100, 0.8, 2)), boxes((0, 0, 20, 20, 0.7, 1))]
    candidate = [
        # the first box shifted by 2 px (IoU 0.90 with a 40 px side: still a match), the second moved by 8 px
        boxes((12, 10, 52, 50, 0.9, 0), (68, 60, 108, 100, 0.8, 2)),
        # same place, another class; and a box the reference does not have
        boxes((0, 0, 20, 20, 0.7, 0), (30, 30, 40, 40, 0.5, 1)),
    ]
    matched, extra, total = box_agreement(reference, candidate, 0.9)
    assert total == 3 and matched == pytest.approx(1 / 3)
    assert extra == pytest.approx(3 / 3)  # the moved box, the relabelled one and the new one match nothing
    assert box_agreement(reference, candidate, 0.6)[0] == pytest.approx(2 / 3)  # a looser IoU takes the move


def test_each_candidate_box_matches_one_reference_box() -> None:
    twice = boxes((10, 10, 50, 50, 0.9, 0), (10, 10, 50, 50, 0.8, 0))
    assert box_agreement([twice], [twice[:1]], 0.9) == (0.5, 0.0, 2)


def test_embeddings_cosine_and_nearest_neighbours() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 16)).astype(np.float32)
    assert embedding_agreement(reference, reference * 3) == (pytest.approx(1.0), 1.0)  # length does not matter
    lowest, kept = embedding_agreement(reference, reference + rng.normal(scale=0.001, size=reference.shape))
    assert 0.9999 < lowest < 1.0 and kept == 1.0
    lowest, kept = embedding_agreement(reference, reference + rng.normal(scale=0.05, size=reference.shape))
    assert 0.99 < lowest < 0.9999 and 0.5 < kept < 1.0  # close vectors, but some neighbours change
    # two views of one photo are equally near a third: the candidate choosing either keeps the ranking
    tie = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert embedding_agreement(tie, tie[[0, 2, 1, 3]])[1] == 1.0
    shuffled = reference[rng.permutation(40)]  # each vector another's: far from its reference
    lowest, kept = embedding_agreement(reference, shuffled)
    assert lowest < 0.5 and kept < 0.5


def test_gate_judges_every_task_and_says_why_one_failed() -> None:
    heads = Heads.bind(tasks_named("segment,embed"), [(2, 8, 8), (4,)], (8, 8))
    gate = Gate(heads, {"min_pixel_agreement": 0.99, "min_cosine": 0.99})
    maps = np.zeros((4, 8, 8), np.uint8)
    vectors = np.eye(4, dtype=np.float32)
    reference = {"segment": maps, "embed": vectors}
    moved = maps.copy()
    moved[0, 0, :2] = 1  # 2 of 256 pixels: 99.2% agree
    verdicts = gate.judge(reference, {"segment": moved, "embed": vectors})
    assert [(v.task, v.measure, v.passed) for v in verdicts] == [
        ("segment", "pixel agreement", True),
        ("embed", "min cosine", True),
    ]
    assert verdicts[0].value == pytest.approx(254 / 256) and verdicts[0].summary()["bound"] == 0.99
    moved[1] = 1  # a whole map wrong
    failed = gate.judge(reference, {"segment": moved, "embed": vectors[::-1]})
    assert not failed[0].passed and failed[0].reason == "pixel agreement 74.22% < 99.00%"
    assert not failed[1].passed and "min cosine 0.0000 < 0.9900" in failed[1].reason
    assert "nearest neighbour kept" not in failed[1].reason  # four orthogonal vectors: every neighbour a tie


def test_harm_is_kl_for_logits_and_relative_distance_for_other_outputs() -> None:
    heads = Heads.bind(tasks_named("classify,embed"), [(3,), (2,)], (8, 8))
    gate = Gate(heads)
    logits, vectors = np.array([[2.0, 0.0, -1.0]], np.float32), np.array([[3.0, 4.0]], np.float32)
    assert gate.harm((logits, vectors), (logits, vectors)) == pytest.approx(0.0, abs=1e-6)
    # the embedding moved by a tenth of its length: 0.1 of harm, the logits none
    assert gate.harm((logits, vectors), (logits, vectors + [[0.0, 0.5]])) == pytest.approx(0.1, abs=1e-6)


def test_task_bounds_parse_and_refuse() -> None:
    given = (("min_box_match", "95%"), ("max_extra_boxes", "0.02"), ("min_cosine", "0.98"))
    bounds = OptimizeConfig(bounds=given, calibration=Path(".")).bound_values(tasks_named("detect,embed"))
    assert bounds["min_box_match"] == 0.95 and bounds["max_extra_boxes"] == 0.02 and bounds["min_cosine"] == 0.98
    assert bounds["box_iou"] == 0.9 and bounds["min_neighbours_kept"] == 0.99  # the rest at their defaults
    with pytest.raises(ValueError, match="--min-pixel-agreement must look like"):
        OptimizeConfig(bounds=(("min_pixel_agreement", "most"),)).bound_values(tasks_named("segment"))
    with pytest.raises(ValueError, match="--box-iou must be from"):
        OptimizeConfig(bounds=(("box_iou", "0"),)).bound_values(tasks_named("detect"))


def test_auto_batch_sizes_stop_at_8_for_a_large_input() -> None:
    assert OptimizeConfig().batch_size_list(224 * 224) == [1, 2, 4, 8, 16, 32]
    assert OptimizeConfig().batch_size_list(640 * 640) == [1, 2, 4, 8]
    assert OptimizeConfig(batch_sizes="2,1").batch_size_list(640 * 640) == [1, 2]


def test_a_detectors_views_are_letterboxed_as_the_server_letterboxes(tmp_path: Path) -> None:
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.fromarray(np.full((40, 160, 3), 200, np.uint8)).save(folder / "wide.png")  # 4:1, light grey
    spec = input_spec((64, 64), 0, "letterbox", "unit")
    sets = sample_sets(folder, spec, 4, 4)
    assert sets.calibration.shape == (4, 64, 64, 3)
    first = sets.calibration[0]  # the photo as the server sees it: 64 x 16 of it in the middle, grey 114 around
    assert (first[:20] == 114).all() and (first[-20:] == 114).all() and (first[28:36] == 200).all()
    for view in sets.calibration[1:]:  # random crops (3:4 to 4:3 of the photo's area): padded too
        assert (view[0] == 114).all() or (view[:, 0] == 114).all()


def test_answers_read_by_real_heads_and_errors_agree_with_nothing() -> None:
    # a segmenter (4 classes, 6 x 8 maps of a 12 x 16 input) that also embeds; NaN outputs are answers the
    # server would refuse (500 invalid_model_output): a candidate's count against it, fp32's are left out
    heads = Heads.bind(tasks_named("segment,embed"), [(4, 6, 8), (5,)], (12, 16))
    gate = Gate(heads)
    rng = np.random.default_rng(1)
    scores, vectors = rng.normal(size=(3, 4, 6, 8)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    reference = gate.answers((scores, vectors))
    assert reference["segment"].shape == (3, 6, 8) and np.array_equal(reference["segment"], scores.argmax(axis=1))
    broken = gate.answers((np.full_like(scores, np.nan), np.full_like(vectors, np.nan)))  # every image fails
    segment, embed = gate.judge(reference, broken)
    assert not segment.passed and segment.value == 0.0
    assert not embed.passed and embed.value == 0.0
    # fp32 itself failing on one image: that image is left out, the others compared
    scores[1, 0, 0, 0], vectors[1, 0] = np.nan, np.nan
    flawed = gate.answers((scores, vectors))
    segment, embed = gate.judge(flawed, flawed)
    assert segment.passed and segment.details["left_out"] == 1
    assert embed.passed and embed.value == pytest.approx(1.0) and embed.details["left_out"] == 1


def test_a_dense_detectors_harm_weighs_its_scores_apart_from_its_boxes() -> None:
    heads = Heads.bind(tasks_named("detect"), [(4 + 2, 50)], (64, 64))
    gate = Gate(heads)
    rng = np.random.default_rng(2)
    dense = np.concatenate((rng.uniform(0, 640, (1, 4, 50)), rng.uniform(0, 1, (1, 2, 50))), axis=1)
    moved_scores = dense.copy()
    moved_scores[:, 4:] *= 1.1  # a tenth on every class score: tiny next to boxes in pixels, counted alone
    assert gate.harm((dense,), (moved_scores,)) == pytest.approx(0.1, rel=1e-3)
