"""The CUDA path (pinned batch buffer, fp16): runs only where torch sees a GPU."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import CAT_LABELS, PHOTOS, running_server

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_classify_on_cuda_fp16(tmp_path: Path) -> None:
    with running_server(tmp_path, "--device", "cuda") as server:
        response = httpx.post(f"{server.url}/classify", files={"image": ("c.jpg", PHOTOS["cat"])}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["prediction"]["label"] in CAT_LABELS
        assert httpx.get(f"{server.url}/", timeout=10).json()["device"] == "cuda"
