"""Which pipeline serves a task, and which served model version answers a request.

Two registries, timm-style (a name in, a class or an object out):

- :data:`PIPELINES` maps each :class:`~polynl_core.tasks.Task` to its pipeline class;
  :func:`make_pipeline` builds one for a model version, and a task with no pipeline is an
  :class:`~polynl_core.tasks.UnknownTask` error at start-up, not a silent skip.
- :class:`ModelRegistry` holds every served model version by (name, version) and the default
  model of each task; :meth:`ModelRegistry.find` resolves a request's ``model`` and ``version``
  query values (the default model, newest served version, when absent) or raises a 404 that
  lists what is served.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from polynl_core.repository import LoadedModel
from polynl_core.tasks import Task, UnknownTask
from service.batching import BatchObserver, PredictFn
from service.errors import UnknownModel
from service.model_settings import ServingSettings
from service.pipelines import ClassifierPipeline, DetectorPipeline, ModelPipeline
from service.runtime import ModelSession
from service.settings import Settings

AnyPipeline = ModelPipeline[Any, Any]

PIPELINES: dict[Task, type[AnyPipeline]] = {
    Task.CLASSIFICATION: ClassifierPipeline,
    Task.FACE_DETECTION: DetectorPipeline,
}


def pipeline_class(task: Task | str) -> type[AnyPipeline]:
    try:
        return PIPELINES[Task(task)]
    except (KeyError, ValueError):
        raise UnknownTask(f"no pipeline serves the task {task!r}; known: {', '.join(PIPELINES)}") from None


def make_pipeline(
    model: LoadedModel,
    session: ModelSession,
    settings: Settings,
    serving: ServingSettings,
    observer: BatchObserver,
    *,
    label: str | None = None,
    predict: PredictFn | None = None,
) -> AnyPipeline:
    cls = pipeline_class(model.config.task)
    return cls(model, session, settings, serving, observer, label=label, predict=predict)


@dataclass
class ModelRegistry:
    """Every served model version, and the default model of each task."""

    pipelines: dict[tuple[str, int], AnyPipeline] = field(default_factory=dict)
    defaults: dict[Task, str] = field(default_factory=dict)

    def add(self, pipeline: AnyPipeline) -> None:
        self.pipelines[(pipeline.name, pipeline.version)] = pipeline

    def __iter__(self) -> Iterator[AnyPipeline]:
        return iter(self.pipelines.values())

    def __len__(self) -> int:
        return len(self.pipelines)

    def names(self, task: Task) -> list[str]:
        return sorted({p.name for p in self if p.task is task})

    def versions(self, name: str) -> list[int]:
        return sorted((v for n, v in self.pipelines if n == name), reverse=True)

    def find(self, task: Task, model: str | None = None, version: int | None = None) -> AnyPipeline:
        """The pipeline answering ``task`` for a request's ``model`` / ``version`` values."""
        names = self.names(task)
        name = model if model is not None else self.defaults.get(task)
        if name is None or name not in names:
            served = ", ".join(names) or "none"
            raise UnknownModel(f"no {task.value} model named {model!r} is served; served: {served}")
        versions = self.versions(name)
        chosen = versions[0] if version is None else version
        if chosen not in versions:
            served = ", ".join(str(v) for v in versions)
            raise UnknownModel(f"model {name!r} has no served version {version}; served versions: {served}")
        return self.pipelines[(name, chosen)]
