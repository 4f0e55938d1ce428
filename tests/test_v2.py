"""The Open Inference Protocol (KServe v2 / Triton HTTP) with the real client from PyPI,
`tritonclient[http]`, against a real server holding a two-model repository:

  lite0  EfficientNet-Lite0 with its published ImageNet weights, as TorchScript
  tiny   a 4-class TorchScript model (channel means -> linear), for load/unload round trips
"""

from __future__ import annotations

import base64
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    ADMIN,
    CAT_LABELS,
    PHOTOS,
    TINY_LABELS,
    Server,
    Tiny,
    admin_token_file,
    running_server,
    wait_for,
    write_model_folder,
)
from torchrest.model_input import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from torchrest.preprocess import decode_image

pytestmark = pytest.mark.slow(seconds=40)


@pytest.fixture(scope="module")
def repository(lite0_repository: Path) -> Path:
    return lite0_repository


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("v2"), "--model-repository", str(repository)) as running:
        yield running


@pytest.fixture()
def client(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=8)
    yield client
    client.close()


def image_input(*images: bytes, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # JSON carries BYTES as strings: images go base64
        encoded = [base64.b64encode(image).decode() for image in images]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def outputs(*names: str, binary: bool = True) -> list[httpclient.InferRequestedOutput]:
    return [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]


def label(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cat_pixels() -> np.ndarray:
    return decode_image(PHOTOS["cat"], InputSpec(224, 256), 64_000_000)


def test_server_live_ready_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "torchrest"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(metadata["extensions"])
    index = client.get_model_repository_index()
    assert {(row["name"], row["version"], row["state"]) for row in index} == {
        ("lite0", "1", "READY"),
        ("tiny", "1", "READY"),
    }


def test_model_metadata_and_readiness(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("lite0")
    assert metadata["name"] == "lite0" and metadata["versions"] == ["1"]
    inputs = {tensor["name"]: (tensor["datatype"], tensor["shape"]) for tensor in metadata["inputs"]}
    assert inputs == {
        "image": ("BYTES", [-1]),
        "pixels": ("UINT8", [-1, 224, 224, 3]),
        "tensor": ("FP32", [-1, 3, 224, 224]),
    }
    outputs_ = {tensor["name"]: (tensor["datatype"], tensor["shape"]) for tensor in metadata["outputs"]}
    assert outputs_["probabilities"] == ("FP32", [-1, 1000])
    assert outputs_["labels"][0] == "BYTES" and outputs_["scores"][0] == "FP32"
    assert client.is_model_ready("lite0") and client.is_model_ready("tiny", "1")
    assert client.get_model_metadata("tiny", "1")["outputs"][0]["shape"] == [-1, 4]


def test_bytes_image_binary_in_and_out(client: httpclient.InferenceServerClient) -> None:
    result = client.infer(
        "lite0",
        [image_input(PHOTOS["cat"])],
        outputs=outputs("labels", "scores"),
        request_id="cat-1",
        parameters={"top_k": 3},
    )
    labels, scores = result.as_numpy("labels"), result.as_numpy("scores")
    assert labels.shape == (1, 3) and scores.shape == (1, 3)
    assert label(labels[0][0]) in CAT_LABELS
    assert scores.dtype == np.float32 and scores[0][0] >= scores[0][1] >= scores[0][2] > 0
    response = result.get_response()
    assert response["id"] == "cat-1" and response["model_name"] == "lite0" and response["model_version"] == "1"


def test_bytes_image_as_json(client: httpclient.InferenceServerClient) -> None:
    result = client.infer(
        "lite0", [image_input(PHOTOS["cat"], binary=False)], outputs=outputs("labels", "scores", binary=False)
    )
    assert label(result.as_numpy("labels")[0][0]) in CAT_LABELS
    assert "parameters" not in result.get_response()["outputs"][0]  # JSON data, not binary


def test_uint8_and_fp32_tensors_answer_as_the_image_does(client: httpclient.InferenceServerClient) -> None:
    """The same cat as encoded bytes, as pre-processed UINT8 pixels and as normalised FP32: one answer."""
    from_image = client.infer("lite0", [image_input(PHOTOS["cat"])], outputs=outputs("probabilities"))
    expected = from_image.as_numpy("probabilities")
    pixels = cat_pixels()[None]
    uint8 = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    uint8.set_data_from_numpy(pixels)
    from_pixels = client.infer("lite0", [uint8], outputs=outputs("probabilities")).as_numpy("probabilities")
    assert from_pixels.shape == (1, 1000)
    assert np.array_equal(from_pixels, expected)
    normalised = ((pixels / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(0, 3, 1, 2)
    fp32 = httpclient.InferInput("tensor", list(normalised.shape), "FP32")
    fp32.set_data_from_numpy(normalised.astype(np.float32))
    from_tensor = client.infer("lite0", [fp32], outputs=outputs("probabilities")).as_numpy("probabilities")
    assert np.abs(from_tensor - expected).max() < 1e-5
    assert abs(float(from_tensor.sum()) - 1) < 1e-4


def test_eight_images_in_one_request(client: httpclient.InferenceServerClient) -> None:
    photos = ["cat", "coffee", "astronaut", "rocket"] * 2
    result = client.infer("lite0", [image_input(*(PHOTOS[p] for p in photos))], outputs=outputs("labels", "scores"))
    labels = [label(row[0]) for row in result.as_numpy("labels")]
    assert len(labels) == 8 and labels[:4] == labels[4:]
    assert labels[0] in CAT_LABELS and labels[1] in {"espresso", "cup"}


def test_async_burst_of_32_each_answered_correctly(client: httpclient.InferenceServerClient) -> None:
    photos = ["cat", "coffee"] * 16
    pending = [
        client.async_infer("lite0", [image_input(PHOTOS[p])], request_id=f"{i}-{p}", outputs=outputs("labels"))
        for i, p in enumerate(photos)
    ]
    for index, (photo, request) in enumerate(zip(photos, pending, strict=True)):
        result = request.get_result()
        assert result.get_response()["id"] == f"{index}-{photo}"
        answer = label(result.as_numpy("labels")[0][0])
        assert answer in (CAT_LABELS if photo == "cat" else {"espresso", "cup"}), (photo, answer)


def test_errors_unknown_model_and_bad_shape(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [image_input(PHOTOS["cat"])])
    assert unknown.value.status() == "404" and "unknown model" in unknown.value.message()
    pixels = httpclient.InferInput("pixels", [1, 224, 224], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 224, 224), np.uint8))
    with pytest.raises(InferenceServerException) as bad_shape:
        client.infer("lite0", [pixels])
    assert bad_shape.value.status() == "400" and "shape [n, 224, 224, 3]" in bad_shape.value.message()
    with pytest.raises(InferenceServerException) as bad_version:
        client.get_model_metadata("lite0", "7")
    assert bad_version.value.status() == "404"


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b'{"inputs": [', {}, 400, "not valid JSON"),
        (b'{"inputs": []}', {"inference-header-content-length": "500"}, 400, "past the body"),
        (
            b'{"inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}',
            {},
            400,
            "unknown input",
        ),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": [1]}]}', {}, 400, "must be BYTES"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]}', {}, 400, "holds 2"),
        (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}]}',
            {},
            400,
            "cannot decode",
        ),
        (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],'
            b' "outputs": [{"name": "logits"}]}',
            {},
            400,
            None,
        ),
    ],
)
def test_malformed_infer_requests_are_400_json_errors(
    server: Server, body: bytes, headers: dict[str, str], status: int, reason: str | None
) -> None:
    response = httpx.post(f"{server.url}/v2/models/lite0/infer", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert reason is None or reason in response.json()["error"]


def test_classify_picks_a_model_and_stats_count_both_routes(
    server: Server, client: httpclient.InferenceServerClient
) -> None:
    before = client.get_inference_statistics("tiny")["model_stats"][0]
    answer = httpx.post(f"{server.url}/classify?model=tiny", files={"image": PHOTOS["cat"]}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] == "tiny"
    assert answer.json()["prediction"]["label"] in TINY_LABELS
    default = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=30)
    assert default.json()["model"] == "lite0"
    unknown = httpx.post(f"{server.url}/classify?model=nope", files={"image": PHOTOS["cat"]}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    client.infer("tiny", [image_input(PHOTOS["cat"], PHOTOS["coffee"])])
    after = client.get_inference_statistics("tiny")["model_stats"][0]
    assert after["name"] == "tiny" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 3
    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 3 and success["ns"] > 0
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][stage]["count"] >= 3
    assert sum(batch["compute_infer"]["count"] for batch in after["batch_stats"]) == after["execution_count"]


class Traffic(threading.Thread):
    """Back-to-back requests to one model (/classify and v2 infer in turn), counting statuses."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.statuses: Counter[int | str] = Counter()
        self.versions: Counter[str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        body = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PHOTOS["cat"]).decode()]}
            ]
        }
        with httpx.Client(base_url=self.url, timeout=30) as http:
            turn = 0
            while not self.stopping.is_set():
                turn += 1
                try:
                    if turn % 2:
                        response = http.post(f"/classify?model={self.model}", files={"image": PHOTOS["cat"]})
                    else:
                        response = http.post(f"/v2/models/{self.model}/infer", json=body)
                        if response.status_code == 200:
                            self.versions[response.json()["model_version"]] += 1
                    self.statuses[response.status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1

    def stop(self) -> Counter[int | str]:
        self.stopping.set()
        self.join(60)
        return self.statuses


def test_rollout_and_unload_under_traffic_fail_no_request(repository: Path, tmp_path: Path) -> None:
    """Traffic on both models while tiny gets a version 2 (written to disk, then loaded), then while
    tiny is unloaded and loaded again: every request to a model that stays up is answered 200."""
    repository = Path(shutil.copytree(repository, tmp_path / "repository"))
    admin = ("--admin-token-file", str(admin_token_file(tmp_path)))
    with running_server(tmp_path, "--model-repository", str(repository), *admin) as server:
        client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
        lite0, tiny = Traffic(server.url, "lite0"), Traffic(server.url, "tiny")
        lite0.start()
        tiny.start()
        wait_for(lambda: tiny.versions["1"] >= 3 and sum(lite0.statuses.values()) >= 3, what="traffic on version 1")
        write_model_folder(repository, "tiny", Tiny(0.5), TINY_LABELS, version=2)
        client.load_model("tiny", headers=ADMIN)  # rollout: version 2 swaps in, version 1 drains
        assert client.get_model_metadata("tiny")["versions"] == ["2"]
        wait_for(lambda: tiny.versions["2"] >= 3, what="traffic on version 2")
        tiny_statuses = tiny.stop()
        assert set(tiny_statuses) == {200}, tiny_statuses
        assert tiny.versions["1"] > 0 and tiny.versions["2"] > 0, tiny.versions

        client.unload_model("tiny", headers=ADMIN)
        assert not client.is_model_ready("tiny")
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert index["tiny"]["state"] == "UNAVAILABLE" and index["lite0"]["state"] == "READY"
        gone = httpx.post(f"{server.url}/classify?model=tiny", files={"image": PHOTOS["cat"]}, timeout=30)
        assert gone.status_code == 503 and gone.json()["code"] == "not_ready"
        client.load_model("tiny", headers=ADMIN)
        assert client.is_model_ready("tiny")
        answered = lite0.statuses[200]
        wait_for(lambda: lite0.statuses[200] >= max(answered + 3, 11), what="lite0 answering after tiny's reload")
        lite0_statuses = lite0.stop()
        assert set(lite0_statuses) == {200}, lite0_statuses
        assert sum(lite0_statuses.values()) > 10

        broken = repository / "broken"
        broken.mkdir()
        (broken / "config.json").write_text('{"name": "broken", "backend": "torch", "artifact": "1/model.pt"}')
        with pytest.raises(InferenceServerException) as failed:
            client.load_model("broken", headers=ADMIN)
        assert (
            failed.value.status() == "400" and "names artifact 1/model.pt, which is missing" in failed.value.message()
        )
        assert client.is_server_live() and client.is_model_ready("lite0")
        client.close()


def test_a_single_model_folder_serves_as_a_repository_of_one(repository: Path, tmp_path: Path) -> None:
    """What KServe's storage initializer mounts at /mnt/models for one InferenceService: the model folder."""
    admin = ("--admin-token-file", str(admin_token_file(tmp_path)))
    single = ("--model-repository", str(repository / "tiny"))
    with running_server(tmp_path, *single, *admin) as server, server.client(headers=ADMIN) as http:
        index = http.post("/v2/repository/index").json()
        assert [(model["name"], model["state"]) for model in index] == [("tiny", "READY")]
        answer = http.post("/classify", files={"image": PHOTOS["cat"]}).json()
        assert answer["model"] == "tiny" and answer["prediction"]["label"] in TINY_LABELS
        assert http.post("/v2/repository/models/tiny/load").status_code == 200
        assert http.post("/v2/repository/models/lite0/load").status_code == 404
