"""ONNX Runtime sessions as the service opens them (real ONNX files from the model repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polynl_core.pyramid import level_bucket
from polynl_core.repository import LoadedModel, load_repository
from service.metrics import Metrics
from service.model_settings import serving_settings
from service.pipelines import DetectorPipeline
from service.registry import make_pipeline
from service.runtime import create_session, requested_providers
from service.settings import Settings


def cpu_settings(**overrides: object) -> Settings:
    return Settings(providers=["CPUExecutionProvider"], intra_op_threads=1, **overrides)  # type: ignore[arg-type]


def test_session_reports_the_providers_it_really_got(model_repository: Path) -> None:
    model = load_repository(model_repository)["classifier"]
    session = create_session("classifier", model.onnx_path, Settings(intra_op_threads=1))
    # CUDA is asked for first by default; on a host without a usable GPU the session runs on CPU.
    assert session.providers[-1] == "CPUExecutionProvider"
    assert set(session.providers) <= set(requested_providers(Settings()))


def test_io_binding_gives_the_same_outputs_as_plain_run(model_repository: Path) -> None:
    model = load_repository(model_repository)["face_detector"]
    plain = create_session("face_detector", model.onnx_path, cpu_settings(io_binding=False))
    bound = create_session("face_detector", model.onnx_path, cpu_settings(io_binding=True))
    assert bound.io_binding and not plain.io_binding
    batch = np.random.default_rng(0).standard_normal((2, 3, 320, 320)).astype(np.float32)
    expected, got = plain.run(batch), bound.run(batch)
    assert set(got) == {"boxes", "scores", "landmarks"}
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def _detector(model_repository: Path, **overrides: object) -> tuple[LoadedModel, DetectorPipeline]:
    """The repository's detector as the service builds it, with these settings overridden."""
    model = load_repository(model_repository)["face_detector"]
    settings = cpu_settings(**overrides)
    session = create_session("face_detector", model.onnx_path, settings)
    serving = serving_settings(model.config, settings)
    pipeline = make_pipeline(model, session, settings, serving, Metrics().observer("face_detector"))
    assert isinstance(pipeline, DetectorPipeline)
    return model, pipeline


@pytest.mark.parametrize(
    ("override", "expected"), [(None, None), ([(256, 256), (256, 384)], [(256, 256), (256, 384)])]
)
def test_detection_buckets_come_from_config_unless_overridden(
    model_repository: Path, override: list[tuple[int, int]] | None, expected: list[tuple[int, int]] | None
) -> None:
    model, pipeline = _detector(model_repository, detection_buckets=override)
    assert pipeline.buckets == (expected or [tuple(b) for b in model.config.size_buckets or []])
    # One warm-up per bucket, then per smaller bucket of the pyramid levels (each shape once).
    levels = [level_bucket(b, f) for b in pipeline.buckets for f in pipeline.pyramid]
    shapes = [(1, 3, h, w) for h, w in dict.fromkeys([*pipeline.buckets, *levels])]
    assert pipeline.warmup_shapes() == shapes


@pytest.mark.parametrize(("override", "from_config"), [(None, True), ([0.25, 0.5], False), ([], False)])
def test_detector_pyramid_comes_from_config_unless_overridden(
    model_repository: Path, override: list[float] | None, from_config: bool
) -> None:
    model, pipeline = _detector(model_repository, detector_pyramid=override)
    expected = model.config.preprocess.pyramid if from_config else tuple(sorted(override or [], reverse=True))
    assert pipeline.pyramid == expected
    levels = {level_bucket(b, f) for b in pipeline.buckets for f in expected} - set(pipeline.buckets)
    assert levels <= {shape[2:] for shape in pipeline.warmup_shapes()}
