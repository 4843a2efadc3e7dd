"""A real Prometheus (Debian's ``prometheus``) scrapes a real server, evaluates our rules, fires an alert.

- ``promtool`` checks the configuration and the rules, and runs the rules' unit tests
  (``deploy/prometheus/rules/tests.yml``).
- Live: the service runs with a fixed artificial inference time and a small queue (as the
  overload drill does), Prometheus scrapes it every second on loopback and evaluates
  ``deploy/prometheus/rules/*.yml`` every second, with every alert's ``for:`` cut to 0 s (the
  only change to the shipped rules, so the test does not wait minutes). Traffic, then a burst
  over capacity; the test then asks Prometheus's HTTP API that the recording rules have values,
  that the queue filled, that the shedding alert fires, that process and readiness metrics are
  there, and that every query of the Grafana dashboard evaluates.

Prometheus and promtool come from Debian (``tests/deploy/install_prometheus.sh``, run by
``.ci/run``); without them the tests skip, loudly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import image_cases
import pytest
from conftest import SAMPLES, ServerHandle, free_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules"
DASHBOARD = ROOT / "deploy" / "grafana" / "polynl-serve.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is absent: run tests/deploy/install_prometheus.sh"
)


def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    _promtool("check", "rules", str(RULES / "recording.yml"), str(RULES / "alerts.yml"))
    _promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


@needs_promtool
@pytest.mark.parametrize(
    "order", [None, ["polynl-recording", "polynl-alerts"], ["polynl-alerts", "polynl-recording"]]
)
def test_the_rules_pass_their_unit_tests(order: list[str] | None, tmp_path: Path) -> None:
    """Prometheus does not order its rule groups: the unit tests must pass whichever runs first."""
    tests = RULES / "tests.yml"
    if order is not None:
        for rules in RULES.glob("*.yml"):
            shutil.copy(rules, tmp_path / rules.name)
        tests = tmp_path / "tests.yml"
        tests.write_text(f"group_eval_order: {json.dumps(order)}\n" + tests.read_text())
    assert "SUCCESS" in _promtool("test", "rules", str(tests))


def test_every_alert_has_a_description_and_a_runbook_section() -> None:
    text = (RULES / "alerts.yml").read_text()
    readme = (ROOT / "deploy" / "README-deploy.md").read_text().lower()
    alerts = re.findall(r"- alert: (\w+)", text)
    assert len(alerts) >= 6
    for alert in alerts:
        block = text.split(f"- alert: {alert}")[1].split("- alert:")[0]
        assert "description:" in block and f"runbook: deploy/README-deploy.md#{alert.lower()}" in block
        assert f"#### {alert.lower()}" in readme, f"no runbook section for {alert}"


SERVER = {
    "POLYNL_MAX_BATCH_SIZE": "2",
    "POLYNL_MAX_WAIT_MS": "10",
    "POLYNL_INFERENCE_DELAY_MS": "300",
    "POLYNL_QUEUE_SIZE": "6",
    "POLYNL_REQUEST_TIMEOUT_S": "5",
    "POLYNL_ACCESS_LOG": "false",
}


@pytest.fixture(scope="module")
def prometheus(start_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerHandle]]:  # type: ignore[no-untyped-def]
    if PROMETHEUS is None:
        pytest.skip("prometheus is absent: run tests/deploy/install_prometheus.sh")
    server: ServerHandle = start_server(SERVER)
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "recording.yml").write_text((RULES / "recording.yml").read_text())
    alerts = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", (RULES / "alerts.yml").read_text())
    (folder / "alerts.yml").write_text(alerts)
    target = str(server.url).split("//")[1].rstrip("/")
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [recording.yml, alerts.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: polynl\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "prometheus.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (folder / "prometheus.log").read_text()
            time.sleep(0.3)
        else:
            pytest.fail("prometheus did not become ready")
        yield url, server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _eventually(check: Any, seconds: float = 40.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1.0)


def _post(server: ServerHandle, path: str, data: bytes) -> int:
    with httpx.Client(base_url=str(server.url), timeout=30) as client:
        return client.post(path, files={"file": ("x.jpg", data)}).status_code


@pytest.mark.slow
def test_prometheus_records_our_rules_and_fires_the_overload_alert(
    prometheus: tuple[str, ServerHandle],
) -> None:
    url, server = prometheus
    photo = (SAMPLES / "cifar_ship.png").read_bytes()
    assert _eventually(lambda: _query(url, 'up{job="polynl"} == 1'))  # scraping before the traffic
    for _ in range(12):  # ordinary traffic first, over several scrapes
        assert _post(server, "/classify", photo) == 200
        time.sleep(0.25)
    ok = 'job_endpoint_status:polynl_requests:rate1m{endpoint="/classify",status="200"} > 0'
    assert _eventually(lambda: _query(url, ok))
    p99 = 'job_endpoint:polynl_request_duration_seconds:p99_5m{endpoint="/classify"} > 0'
    assert _eventually(lambda: _query(url, p99))

    # A burst over capacity (about 2 images per 300 ms, 6 queue slots) for several scrapes.
    # Each client sends again as soon as it has an answer, so the queue stays full between
    # scrapes (a gauge is only seen when a scrape samples it).
    image = image_cases.jpeg(64, 48)
    end = time.monotonic() + 8.0

    def client() -> list[int]:
        seen = []
        while time.monotonic() < end:
            seen.append(_post(server, "/detect-faces", image))
        return seen

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = [status for seen in pool.map(lambda _: client(), range(16)) for status in seen]
    assert 503 in statuses and 200 in statuses, sorted(set(statuses))

    shed = 'job_model_reason:polynl_dropped:rate5m{model="face_detector",reason="overloaded"} > 0'
    assert _eventually(lambda: _query(url, shed))
    assert _eventually(lambda: _query(url, "max_over_time(instance_model:polynl_queue_fill:ratio[5m]) > 0.8"))
    errors = 'job_endpoint:polynl_request_errors:ratio_rate5m{endpoint="/detect-faces"} > 0'
    assert _eventually(lambda: _query(url, errors))
    assert _query(url, 'job_model:polynl_batch_size:mean_5m{model="face_detector"} >= 1')

    def firing() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "PolynlShedding" and a["state"] == "firing"]

    assert _eventually(firing), "PolynlShedding did not fire"

    # Process, readiness and info metrics reach Prometheus too.
    assert _query(url, 'process_resident_memory_bytes{job="polynl"} > 0')
    assert _query(url, 'polynl_model_ready{job="polynl",model="face_detector"} == 1')
    assert _query(url, 'polynl_build_info{job="polynl"}')


@pytest.mark.slow
def test_every_dashboard_query_evaluates(prometheus: tuple[str, ServerHandle]) -> None:
    url, _ = prometheus
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        _query(url, expr.replace("$job", ".*"))  # status success: the query parses and runs
