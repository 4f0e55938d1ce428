"""The manifests under deploy/: every YAML parses and validates against its real schema, and says what
the server understands.

- Core Kubernetes kinds: `kubernetes-validate` with its bundled schemas, strict (unknown fields fail).
- KServe kinds: loaded into the `kserve` package's model classes, field by field; a field the class does
  not know fails, and the object written back must keep every field and value of the YAML.
- deploy/k8s is a kustomize base: it is rendered here (resources, labels, images) and the result validated.
- The container arguments and TORCHREST_* variables parse with torchrest's own CLI, the probes point at
  routes the server has, threads match the CPU limit, and the grace period outlasts the drain.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes.client.models as k8s_models
import kubernetes_validate
import pytest
import yaml
from kserve import models as kserve_models
from kserve.api_client import ApiClient

from torchrest import __version__
from torchrest.backends import BACKENDS
from torchrest.cli import build_parser
from torchrest.config import ServerConfig, config_fields, env_name

DEPLOY = Path(__file__).parent.parent / "deploy"
KUBERNETES_VERSION = "1.33"  # a current release; the bundled schemas go up to kubernetes_validate.latest_version()
KSERVE_CLASSES = {
    "ServingRuntime": kserve_models.V1alpha1ServingRuntime,
    "ClusterServingRuntime": kserve_models.V1alpha1ClusterServingRuntime,
    "InferenceService": kserve_models.V1beta1InferenceService,
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": float, "object": object}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[Path]:
    return sorted(path for path in DEPLOY.rglob("*.yaml") if path.name != "kustomization.yaml")


def model_class(name: str) -> type:
    """An OpenAPI model class by name: KServe's own, or the Kubernetes client's (V1Container, ...)."""
    return getattr(kserve_models, name, None) or getattr(k8s_models, name)


def load_strictly(data: Any, type_name: str, where: str) -> Any:
    """Build the model object for `data`; AssertionError naming any field the class does not have."""
    # KServe's generator writes list[X] and dict(str, X); the Kubernetes client's, List[X] and Dict[str, X]
    if match := re.fullmatch(r"[lL]ist\[(.*)\]", type_name):
        assert isinstance(data, list), f"{where}: expected a list"
        return [load_strictly(value, match.group(1), f"{where}[{i}]") for i, value in enumerate(data)]
    if match := re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", type_name):
        assert isinstance(data, dict), f"{where}: expected a mapping"
        item = match.group(1) or match.group(2)
        return {key: load_strictly(value, item, f"{where}.{key}") for key, value in data.items()}
    if type_name in PRIMITIVES or type_name == "datetime":
        return data
    klass = model_class(type_name)
    assert isinstance(data, dict), f"{where}: expected a {type_name} mapping"
    by_json_name = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json_name))
    assert not unknown, f"{where}: {type_name} has no field {', '.join(unknown)}"
    values = {
        by_json_name[key]: load_strictly(value, klass.openapi_types[by_json_name[key]], f"{where}.{key}")
        for key, value in data.items()
    }
    return klass(**values)


def assert_kept(original: Any, written: Any, where: str) -> None:
    """Everything in `original` is in `written` with the same value (the classes may add defaults)."""
    if isinstance(original, dict):
        assert isinstance(written, dict), f"{where}: became {written!r}"
        for key, value in original.items():
            assert key in written, f"{where}.{key} was dropped"
            assert_kept(value, written[key], f"{where}.{key}")
    elif isinstance(original, list):
        assert isinstance(written, list) and len(written) == len(original), f"{where}: became {written!r}"
        for i, (value, kept) in enumerate(zip(original, written, strict=True)):
            assert_kept(value, kept, f"{where}[{i}]")
    else:
        assert written == original, f"{where}: {original!r} became {written!r}"


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """What `kustomize build` gives for the fields this base uses: resources, labels and images."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "labels", "images"}
    assert not unsupported, f"render_kustomization does not apply {unsupported}"
    rendered = []
    for resource in kustomization["resources"]:
        for doc in documents(folder / resource):
            doc = copy.deepcopy(doc)
            for label in kustomization.get("labels", []):
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            for container in containers(doc):
                for image in kustomization.get("images", []):
                    if container["image"].split(":")[0] == image["name"]:
                        container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
            rendered.append(doc)
    return rendered


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec)
    return list(pod.get("containers", []))


@pytest.mark.parametrize("path", manifests(), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_manifest_validates_against_its_schema(path: Path) -> None:
    for doc in documents(path):
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            klass = KSERVE_CLASSES[doc["kind"]]
            loaded = load_strictly(doc, klass.__name__, doc["kind"])
            assert_kept(doc, ApiClient().sanitize_for_serialization(loaded), doc["kind"])
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_loading_catches_a_misspelt_field() -> None:
    doc = documents(DEPLOY / "kserve" / "cluster-serving-runtime.yaml")[0]
    doc["spec"]["containers"][0]["readinesProbe"] = doc["spec"]["containers"][0].pop("readinessProbe")
    with pytest.raises(AssertionError, match="V1Container has no field readinesProbe"):
        load_strictly(doc, "V1alpha1ClusterServingRuntime", "ClusterServingRuntime")
    bad = documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomize_base_renders_and_validates() -> None:
    folder = DEPLOY / "k8s"
    listed = set(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"])
    assert listed == {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
    rendered = render_kustomization(folder)
    assert {doc["kind"] for doc in rendered} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "torchrest"
    deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
    assert containers(deployment)[0]["image"] == f"torchrest:{__version__}"


def serve_args(container: dict[str, Any]) -> ServerConfig:
    """The ServerConfig the container's arguments and TORCHREST_* variables give, parsed by the real CLI."""
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    known = {env_name(spec.name) for spec in config_fields(ServerConfig)}
    unknown = {name for name in env if name.startswith("TORCHREST_")} - known
    assert not unknown, f"the server has no option {unknown}"
    args = [arg.replace("{{.Name}}", "my-model") for arg in container.get("args", [])]
    with mock.patch.dict(os.environ, {name: value for name, value in env.items() if name in known}):
        namespace = build_parser().parse_args(["serve", *args])  # the variables, read as the server reads them
    return ServerConfig(**{spec.name: getattr(namespace, spec.name) for spec in config_fields(ServerConfig)})


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_container_settings_are_ones_the_server_understands() -> None:
    routes = {"/v2/health/ready", "/v2/health/live", "/health", "/metrics"}
    runtime = documents(DEPLOY / "kserve" / "cluster-serving-runtime.yaml")[0]
    kserve_container = runtime["spec"]["containers"][0]
    assert kserve_container["name"] == "kserve-container"  # the name KServe looks for
    assert kserve_container["image"] == f"torchrest:{__version__}"
    config = serve_args(kserve_container)
    assert config.model_repository == Path("/mnt/models") and config.model_name == "my-model"
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/path"] in routes
    formats = {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
    assert formats == {kind.model_format for kind in BACKENDS.values()}  # every backend's artifacts, no other

    deployment = documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = serve_args(container)
    assert config.threads == cpus(container["resources"]["limits"]["cpu"])
    assert config.tracing and config.log_format == "json"  # the example points at a collector
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > config.drain_timeout + pre_stop_s
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}
