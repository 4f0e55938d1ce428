"""The fast pre-processing (libjpeg-turbo, DCT scaling, crop-box resize) against the textbook one (Pillow,
full resolution, resize 256 then crop 224), judged by what the default model answers on each."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import ExifTags, Image

from tests.conftest import PHOTOS
from torchrest.config import ServerConfig
from torchrest.model_input import InputSpec
from torchrest.models.registry import load_model
from torchrest.optimize.samples import encoded_views
from torchrest.preprocess import decode_image, reference_pixels
from torchrest.tasks.classify import preprocessing_fidelity

pytestmark = pytest.mark.slow(seconds=15)

SPEC = InputSpec(224, 256)
VIEWS = 200


@pytest.fixture(scope="module")
def run_model():  # type: ignore[no-untyped-def]
    backend = load_model(ServerConfig()).open_backend("cpu", 2)
    backend.prepare_thread()
    return lambda batch: backend.run(batch)[0]  # the logits (a built-in model gives its features too)


def test_sample_photos_get_the_reference_answer(run_model) -> None:  # type: ignore[no-untyped-def]
    fidelity = preprocessing_fidelity(run_model, list(PHOTOS.values()), SPEC)
    assert fidelity.top1_agreement == 1.0, fidelity
    assert fidelity.max_probability_diff < 0.1, fidelity


@pytest.mark.slow
def test_held_out_views_agree_with_the_reference(run_model) -> None:  # type: ignore[no-untyped-def]
    files = encoded_views(list(PHOTOS.values()), VIEWS, seed=7)
    fidelity = preprocessing_fidelity(run_model, files, SPEC)
    print(f"pre-processing fidelity on {VIEWS} views: {fidelity}")
    assert fidelity.top1_agreement >= 0.995, fidelity


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_exif_orientation_is_shown_upright_as_pillow_shows_it(orientation: int, fmt: str) -> None:
    """A 3:2 photo tagged with each orientation: the fast path (numpy views for JPEG) turns it as
    Pillow's exif_transpose does in the reference, and the orientation really changes the pixels."""
    photo = Image.open(io.BytesIO(PHOTOS["coffee"])).convert("RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    photo.save(buffer, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    ours = decode_image(buffer.getvalue(), SPEC, 10**8).astype(int)
    reference = reference_pixels(buffer.getvalue(), SPEC).astype(int)
    assert np.abs(ours - reference).max() <= 1
    upright = reference_pixels(PHOTOS["coffee"], SPEC).astype(int)
    assert (np.abs(ours - upright).mean() < 3.0) == (orientation == 1)
