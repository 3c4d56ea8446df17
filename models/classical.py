"""Classical filters (SimpleITK), applied slice by slice: the baselines of the model zoo."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.base import ModelInfo, ProgressCallback, Spacing, parameters_sha256


def _check_volume(volume: np.ndarray) -> np.ndarray:
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
    return np.asarray(volume, dtype=np.float32)


@dataclass(frozen=True)
class IdentityFilter:
    """Returns the input unchanged: a pipeline check whose output must equal the source."""

    info: ModelInfo = field(
        default_factory=lambda: ModelInfo(
            name="identity",
            version="1.0",
            task="identity",
            modality="any",
            description="no change (pipeline validation)",
            weights_sha256=parameters_sha256("identity", {}),
        )
    )

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        data = _check_volume(volume).copy()
        if progress is not None:
            progress(len(data), len(data))
        return data, spacing_mm


@dataclass(frozen=True)
class GaussianFilter:
    """In-plane Gaussian smoothing with a standard deviation in millimetres."""

    sigma_mm: float = 0.75

    @property
    def info(self) -> ModelInfo:
        params = {"sigma_mm": self.sigma_mm}
        return ModelInfo(
            name="gaussian",
            version="1.0",
            task="denoise",
            modality="any",
            description=f"in-plane Gaussian smoothing, sigma {self.sigma_mm} mm (SimpleITK)",
            weights_sha256=parameters_sha256("gaussian", params),
        )

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        import SimpleITK as sitk  # here: a GPU machine without it still runs the networks

        data = _check_volume(volume)
        out = np.empty_like(data)
        for index, plane in enumerate(data):
            image = sitk.GetImageFromArray(plane)
            image.SetSpacing((spacing_mm[2], spacing_mm[1]))
            smoothed = sitk.SmoothingRecursiveGaussian(image, self.sigma_mm)
            out[index] = sitk.GetArrayFromImage(smoothed)
            if progress is not None:
                progress(index + 1, len(data))
        return out, spacing_mm


@dataclass(frozen=True)
class AnisotropicDiffusionFilter:
    """Edge-preserving in-plane denoising by gradient anisotropic diffusion (Perona-Malik).

    ``conductance`` follows ITK: it is relative to the image's mean gradient magnitude,
    so gradients well above it are kept as edges and weaker ones smoothed as noise.
    """

    iterations: int = 8
    time_step: float = 0.0625
    conductance: float = 2.0

    @property
    def info(self) -> ModelInfo:
        params = {
            "iterations": self.iterations,
            "time_step": self.time_step,
            "conductance": self.conductance,
        }
        return ModelInfo(
            name="anisotropic-diffusion",
            version="1.0",
            task="denoise",
            modality="any",
            description=(
                f"in-plane gradient anisotropic diffusion, {self.iterations} iterations, "
                f"conductance {self.conductance} (SimpleITK)"
            ),
            weights_sha256=parameters_sha256("anisotropic-diffusion", params),
        )

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        import SimpleITK as sitk  # here: a GPU machine without it still runs the networks

        data = _check_volume(volume)
        out = np.empty_like(data)
        diffusion = sitk.GradientAnisotropicDiffusionImageFilter()
        diffusion.SetNumberOfIterations(self.iterations)
        # 0.0625 is below the 2-D stability limit of 0.125 for unit pixel spacing.
        diffusion.SetTimeStep(self.time_step)
        diffusion.SetConductanceParameter(self.conductance)
        for index, plane in enumerate(data):
            out[index] = sitk.GetArrayFromImage(diffusion.Execute(sitk.GetImageFromArray(plane)))
            if progress is not None:
                progress(index + 1, len(data))
        return out, spacing_mm
