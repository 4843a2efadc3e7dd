"""The running service's state: settings, metrics, the decode pool and one pipeline per model.

Built by ``service.app``'s lifespan, read by the routes through ``service.dependencies``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.errors import NotReady
from service.metrics import Metrics
from service.pipelines import ClassifierPipeline, DetectorPipeline, ModelPipeline
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    decode_pool: ThreadPoolExecutor
    pipelines: dict[str, ModelPipeline] = field(default_factory=dict)
    ready: bool = False
    accepting: bool = True

    def _first(self, kind: type[ModelPipeline], task: str) -> ModelPipeline:
        if not self.accepting:
            raise NotReady("the server is shutting down", self.settings.retry_after_s)
        for pipeline in self.pipelines.values():
            if isinstance(pipeline, kind):
                if not pipeline.ready:
                    raise NotReady(f"model {pipeline.name!r} is not ready yet", self.settings.retry_after_s)
                return pipeline
        raise NotReady(f"no {task} model is loaded from the model repository", self.settings.retry_after_s)

    def classifier(self) -> ClassifierPipeline:
        pipeline = self._first(ClassifierPipeline, "classification")
        assert isinstance(pipeline, ClassifierPipeline)
        return pipeline

    def detector(self) -> DetectorPipeline:
        pipeline = self._first(DetectorPipeline, "face detection")
        assert isinstance(pipeline, DetectorPipeline)
        return pipeline
