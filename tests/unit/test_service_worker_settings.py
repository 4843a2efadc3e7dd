"""``POLYNL_WORKERS`` and how the workers share the cores between their ONNX Runtime sessions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.runtime import session_options
from service.settings import Settings, usable_cores


def test_one_worker_by_default_with_onnx_runtimes_own_thread_count() -> None:
    settings = Settings()
    assert settings.worker_count == 1
    assert settings.session_threads == 0  # ORT's default: one thread per core


def test_zero_workers_means_one_per_usable_core() -> None:
    assert Settings(workers=0).worker_count == usable_cores()


def test_several_workers_split_the_cores_between_their_sessions() -> None:
    cores = usable_cores()
    settings = Settings(workers=2)
    assert settings.session_threads == max(1, cores // 2)
    assert session_options(settings).intra_op_num_threads == max(1, cores // 2)
    # More workers than cores: never fewer than one thread each.
    assert Settings(workers=cores + 3).session_threads == 1


def test_an_explicit_thread_count_wins_over_the_split() -> None:
    assert Settings(workers=2, intra_op_threads=3).session_threads == 3


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_invalid_worker_counts_are_refused_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("POLYNL_WORKERS", value)
    with pytest.raises(ValidationError):
        Settings()
