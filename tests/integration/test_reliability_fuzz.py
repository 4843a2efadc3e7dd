"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

One real ``python -m service`` on a loopback port, with an API key and protected metrics so
the auth checks have something to check. ``schemathesis run --checks all`` generates
requests for every operation in ``/openapi.json`` (its coverage, fuzzing and stateful
phases, valid and invalid data) and every check must pass: no 5xx; status codes, content
types, headers and bodies as the schema documents them; invalid data rejected; auth not
ignored. The default run is bounded to a few examples per operation (seconds); the
``slow`` run goes deeper.

The one tuned check: a schema-valid upload may still be refused with 415/422, because
"any bytes" is schema-valid but only the decoder can tell whether they are an image.

The CLI runs in a subprocess (in the test's temporary folder, so its cache stays there):
schemathesis' pytest fixture loader does not work with pytest 9 (``from_fixture`` reads a
private pytest attribute that pytest 9 removed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import image_cases
import pytest
from conftest import ServerHandle

API_KEY = "fuzz-key-0123456789"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# The check's defaults, plus "not an image / corrupt image" for schema-valid bytes.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "415", "422", "429", "5XX"]
"""


@pytest.fixture(scope="module")
def fuzz_server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    return start_server({"POLYNL_API_KEY": API_KEY, "POLYNL_PROTECT_METRICS": "true"})


def run_schemathesis(server: ServerHandle, folder: Path, max_examples: int, seed: int) -> None:
    config = folder / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
    ]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    assert "All checks passed" in output or " passed" in output, output[-3000:]


def test_every_operation_conforms_to_its_schema_without_5xx(
    fuzz_server: ServerHandle, tmp_path: Path
) -> None:
    run_schemathesis(fuzz_server, tmp_path, max_examples=5, seed=1)
    assert fuzz_server.process.poll() is None  # the server survived all of it


@pytest.mark.slow
def test_deep_fuzzing_finds_no_5xx_or_schema_violation(fuzz_server: ServerHandle, tmp_path: Path) -> None:
    run_schemathesis(fuzz_server, tmp_path, max_examples=200, seed=2)
    assert fuzz_server.process.poll() is None


# --- what the fuzzer found, pinned: the schema states the limits the server enforces --------
def test_schema_states_the_limits_of_the_loaded_models_and_settings(fuzz_server: ServerHandle) -> None:
    schema = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()
    parameters = {p["name"]: p for p in schema["paths"]["/classify"]["post"]["parameters"]}
    assert set(parameters) == {"top_k", "model", "version"}
    top_k = parameters["top_k"]
    assert top_k["schema"]["maximum"] == 10  # the classifier's label count, not a static 1000
    body = schema["paths"]["/detect-faces"]["post"]["requestBody"]["content"]["multipart/form-data"]
    several = body["schema"]["anyOf"][1]["properties"]["files"]
    assert several == {"minItems": 1, "maxItems": 16}  # POLYNL_MAX_IMAGES_PER_REQUEST


def test_file_and_files_together_are_refused_as_the_schema_says(fuzz_server: ServerHandle) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    files = [("file", ("a.jpg", image_cases.jpeg())), ("files", ("b.jpg", image_cases.jpeg()))]
    response = httpx.post(f"{fuzz_server.url}/classify", files=files, headers=auth, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unexpected_field"
