"""A vision candidate in shadow: run on the same regions of the same frames as the active
version, after it, and each region's decision compared; never acted on.

Two decisions agree when the same defect classes were found (by the pipeline's defect rules)
and, unless one of them is a detector, the label is the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from edge_agent.inference.runtime import ModelLoadError, RuntimeOptions
from edge_agent.inference.vision import Letterbox, VisionModel, VisionResult
from edge_agent.lifecycle import ModelWatch

log = logging.getLogger(__name__)


@dataclass
class ShadowFrame:
    """The candidate's side of one frame: its input per region, then its result per region."""

    sha256: str
    model: VisionModel | None  # None: the candidate did not load; every region counts as failed
    inputs: dict[str, tuple[np.ndarray, Letterbox] | None] = field(default_factory=dict)
    results: dict[str, VisionResult | None] = field(default_factory=dict)

    def prepare(self, region: str, image: np.ndarray) -> None:
        """The region preprocessed as the candidate's manifest says (in the prepare thread)."""
        if self.model is None:
            self.inputs[region] = None
            return
        try:
            self.inputs[region] = self.model.preprocess(image)
        except Exception as exc:  # a failing candidate counts against it, nothing more
            log.info("shadow preprocessing failed version=%s region=%s error=%s",
                     self.model.manifest.version, region, exc)
            self.inputs[region] = None

    def infer(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Run the candidate on every prepared region (in the model thread, after the active
        version); `shapes` are the regions' height and width."""
        for region, prepared in self.inputs.items():
            self.results[region] = None
            if self.model is None or prepared is None:
                continue
            tensor, fit = prepared
            try:
                output = self.model.runner.run({self.model.input_name: tensor})
                self.results[region] = self.model.decode(next(iter(output.values())), fit,
                                                         shapes[region])
            except Exception as exc:  # ONNX Runtime raises several unrelated types
                log.info("shadow inference failed version=%s region=%s error=%s",
                         self.model.manifest.version, region, exc)


class ShadowLoader:
    """The candidate the model watch names for a pipeline's model, loaded once per version."""

    def __init__(self, model_name: str, watch: ModelWatch,
                 runtime: RuntimeOptions | None) -> None:
        self._model_name = model_name
        self._watch = watch
        self._runtime = runtime
        self._model: VisionModel | None = None
        self._failed_sha: str | None = None

    async def frame(self, pool: Executor) -> ShadowFrame | None:
        """A new frame's shadow side, or None when no candidate is in shadow."""
        candidate = self._watch.shadow_candidate(self._model_name)
        if candidate is None:
            self._model = None
            return None
        sha = candidate.manifest.sha256
        loaded = self._model is not None and self._model.manifest.sha256 == sha
        if not loaded and self._failed_sha != sha:
            try:
                self._model = await asyncio.get_running_loop().run_in_executor(
                    pool, lambda: VisionModel(candidate.path, candidate.manifest, self._runtime))
                loaded = True
            except ModelLoadError as exc:
                self._failed_sha, self._model = sha, None
                log.warning("shadow candidate did not load model=%s version=%s error=%s",
                            self._model_name, candidate.manifest.version, exc)
        return ShadowFrame(sha, self._model if loaded else None)


def same_decision(active: VisionResult, shadow: VisionResult | None,
                  defects: Callable[[VisionResult], set[str]]) -> bool | None:
    """Whether the candidate decided a region as the active version did; None: it failed."""
    if shadow is None:
        return None
    if defects(active) != defects(shadow):
        return False
    return "detection" in (active.kind, shadow.kind) or active.label == shadow.label
