"""deploy/k8s checked offline, as a cluster operator's CI would, without a cluster.

Each overlay (cpu, gpu, and cpu-model-volume: the model repository from a volume) is rendered by
``kubectl kustomize`` (Debian's kubernetes-client); every rendered object, and the queue-depth
HPA example, validates against the OpenAPI schema of Kubernetes 1.33 (the oldest minor version
still supported upstream at the time of writing) and 1.37 in strict mode (``kubernetes-validate``,
unknown fields rejected); ``checkov`` finds no failed check, and each check it skips is waived in
the manifest with a reason. Tools missing here: the test says so and skips
(``tests/deploy/install_k8s_tools.sh``, run by ``.ci/run``, installs them). No network: checkov runs
with ``--skip-download`` and, where namespaces can be made, in one with no interface up.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CHECKOV = ROOT / "build" / "checkov-venv" / "bin" / "checkov"
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
OVERLAYS = ["cpu", "gpu", "cpu-model-volume"]


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("K8S CHECK SKIPPED: kubectl missing (tests/deploy/install_k8s_tools.sh)")
    return kubectl


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    kubectl = _kubectl()
    tmp = tmp_path_factory.mktemp("k8s")
    out: dict[str, Path] = {}
    for name in OVERLAYS:
        done = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / name)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"kubectl kustomize {name}: {done.stderr}"
        out[name] = tmp / f"{name}.yaml"
        out[name].write_text(done.stdout)
    return out


def _objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def test_each_overlay_renders_the_whole_workload(rendered: dict[str, Path]) -> None:
    for name, path in rendered.items():
        kinds = sorted(o["kind"] for o in _objects(path))
        assert kinds == sorted(
            [
                "ConfigMap",
                "Deployment",
                "HorizontalPodAutoscaler",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
            ]
        ), name
        assert {o["metadata"]["namespace"] for o in _objects(path)} == {"polynl-serve"}


def test_every_object_validates_against_named_kubernetes_versions_strictly(rendered: dict[str, Path]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the k8s-check extra")
    # The KEDA ScaledObject of the example is a custom resource: no built-in schema to check it against.
    examples = [
        o
        for o in _objects(K8S / "examples" / "hpa-queue-depth.yaml")
        if o["apiVersion"].startswith("autoscaling")
    ]
    assert [o["kind"] for o in examples] == ["HorizontalPodAutoscaler"]
    objects = [o for path in rendered.values() for o in _objects(path)] + examples
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)  # raises with the path of the error
    # The validator does reject what a cluster would: an unknown field, a wrong type.
    deployment = _by_kind(_objects(rendered["cpu"]))["Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_checkov_finds_no_failed_check_and_every_waiver_has_a_reason(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    if not CHECKOV.is_file():
        pytest.skip("K8S CHECK SKIPPED: checkov missing (tests/deploy/install_k8s_tools.sh)")
    files = [*rendered.values(), K8S / "examples" / "hpa-queue-depth.yaml", K8S / "ray" / "rayservice.yaml"]
    command = [str(CHECKOV), "--framework", "kubernetes", "--output", "json", "--skip-download"]
    command += [arg for f in files for arg in ("-f", str(f))]
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30, check=False)
    if shutil.which("unshare") and probe.returncode == 0:
        command = ["unshare", "--net", *command]  # nothing to reach: checkov's look-ups fail at once
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin"},
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert skipped, "the waivers in base/deployment.yaml should show as skipped checks"
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.strip()) > 20, check["check_id"]


def test_pods_follow_the_scrape_contract_probes_and_drain_budget(rendered: dict[str, Path]) -> None:
    for name, path in rendered.items():
        kinds = _by_kind(_objects(path))
        pod = kinds["Deployment"]["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "polynl-serve"
        assert pod["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8000",
            "prometheus.io/path": "/metrics",
        }
        assert [p["name"] for p in kinds["Service"]["spec"]["ports"]] == ["http"]
        spec = pod["spec"]
        container = spec["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        config = kinds["ConfigMap"]["data"]
        # SIGTERM drain: requests get POLYNL_REQUEST_TIMEOUT_S, uvicorn 5 s more; after preStop.
        drain_s = float(config["POLYNL_REQUEST_TIMEOUT_S"]) + 5
        pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 5, name
        assert container["envFrom"][0]["configMapRef"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    gpu = _by_kind(_objects(rendered["gpu"]))["Deployment"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    volume = _by_kind(_objects(rendered["cpu-model-volume"]))
    assert volume["ConfigMap"]["data"]["POLYNL_MODEL_REPOSITORY"] == "/srv/model-repository"
    mounts = volume["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model-repository", "mountPath": "/srv/model-repository", "readOnly": True} in mounts


def test_rayservice_runs_deploy_ray_serve_yaml_with_the_repository_in_the_image() -> None:
    service = yaml.safe_load((K8S / "ray" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    config["applications"][0]["args"]["model_repository"] = "/models"
    assert served["applications"] == config["applications"]
    assert served["http_options"] == config["http_options"]
    ray_version = service["spec"]["rayClusterConfig"]["rayVersion"]
    pin = next(
        line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("ray==")
    )
    assert pin == f"ray=={ray_version}"
