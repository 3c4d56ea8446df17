"""Enhancers for tests of the worker's pipelined path."""

from __future__ import annotations

import threading

import numpy as np

from models.base import ModelInfo, ProgressCallback, SlicesReady, Spacing, StreamingEnhancer


class FailsHalfway:
    """A streaming enhancer that hands over its first slice unchanged, waits until
    ``written`` is set (the caller's sink has written it), then fails as a model can (a
    RuntimeError): a derived file is on disk for an output that will never be recorded."""

    def __init__(self, written: threading.Event) -> None:
        self.written = written

    info = ModelInfo(
        name="halfway", version="1", task="denoise", modality="CT",
        description="fails after its first slice", weights_sha256="0" * 64,
    )  # fmt: skip

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        raise AssertionError("the streaming entry point is used")

    def enhance_streaming(
        self,
        volume: np.ndarray,
        spacing_mm: Spacing,
        ready: SlicesReady,
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, Spacing]:
        ready(0, volume[:1].astype(np.float32))
        if not self.written.wait(timeout=30):
            raise AssertionError("the first slice was never written")
        raise RuntimeError("out of luck")


class FailsAfter:
    """A network preset's enhancer that streams every slice as usual, waits until
    ``written`` is set (its instances are written), then fails: the derived UIDs (and so
    the files' paths) are those of a successful run."""

    def __init__(self, enhancer: StreamingEnhancer, written: threading.Event) -> None:
        self.enhancer = enhancer
        self.written = written

    @property
    def info(self) -> ModelInfo:
        return self.enhancer.info

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        raise AssertionError("the streaming entry point is used")

    def enhance_streaming(
        self,
        volume: np.ndarray,
        spacing_mm: Spacing,
        ready: SlicesReady,
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, Spacing]:
        self.enhancer.enhance_streaming(volume, spacing_mm, ready, progress)
        if not self.written.wait(timeout=30):
            raise AssertionError("the instances were never written")
        raise RuntimeError("failed after the last slice")
