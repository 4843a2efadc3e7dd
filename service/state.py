"""The running service's state: settings, metrics, the decode pool and the served models.

Built by ``service.app``'s lifespan, read by the routes through ``service.dependencies``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from polynl_core.tasks import Task
from service.admission import AdmissionLimit
from service.errors import NotReady
from service.metrics import Metrics
from service.pipelines import ClassifierPipeline, DetectorPipeline
from service.registry import AnyPipeline, ModelRegistry
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    decode_pool: ThreadPoolExecutor
    admission: AdmissionLimit  # inference requests in flight, shared by HTTP and gRPC
    models: ModelRegistry = field(default_factory=ModelRegistry)
    ready: bool = False
    accepting: bool = True

    def pipeline(self, task: Task, model: str | None = None, version: int | None = None) -> AnyPipeline:
        """The ready pipeline for a request's task, ``model`` and ``version`` (503 / 404 otherwise)."""
        retry = self.settings.retry_after_s
        if not self.accepting:
            raise NotReady("the server is shutting down", retry)
        if model is None and not self.models.names(task):
            raise NotReady(f"no {task.value} model is loaded from the model repository", retry)
        pipeline = self.models.find(task, model, version)
        if not pipeline.ready:
            raise NotReady(f"model {pipeline.label!r} is not ready yet", retry)
        return pipeline

    def classifier(self, model: str | None = None, version: int | None = None) -> ClassifierPipeline:
        pipeline = self.pipeline(Task.CLASSIFICATION, model, version)
        assert isinstance(pipeline, ClassifierPipeline)
        return pipeline

    def detector(self, model: str | None = None, version: int | None = None) -> DetectorPipeline:
        pipeline = self.pipeline(Task.FACE_DETECTION, model, version)
        assert isinstance(pipeline, DetectorPipeline)
        return pipeline
