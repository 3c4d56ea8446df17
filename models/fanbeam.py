"""Fan-beam low-dose CT simulation: bowtie, Poisson and electronic noise, FBP kernels."""

# The slice is re-projected in an equiangular fan-beam geometry (a third-generation
# scanner: source and detector arc rotating together over 360 degrees), the extra noise a
# lower dose would bring is drawn per ray (Yu L et al., J Comput Assist Tomogr
# 2012;36(4):477-487: quantum noise plus electronic noise, the incident flux shaped by a
# bowtie filter), and, FBP being linear, the noise sinogram alone is reconstructed with the
# equiangular fan-beam FBP (Kak & Slaney, "Principles of Computerized Tomographic Imaging",
# 1988, section 3.4.1) and a reconstruction kernel from smooth to sharp.
#
# Everything runs in PyTorch (CPU, or a GPU when one is given), vectorised over views.

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.simulation import MU_WATER_PER_MM

_VIEW_CHUNK = 24  # views per vectorised projection / back-projection step


@dataclass(frozen=True)
class FanBeamGeometry:
    """An equiangular fan-beam scanner.

    Parameters
    ----------
    source_to_iso_mm : float
        Source to rotation axis (GE LightSpeed ~541 mm, Siemens Definition ~595 mm).
    source_to_detector_mm : float
        Source to detector arc (GE ~949 mm, Siemens ~1085.6 mm). Only its ratio to
        ``source_to_iso_mm`` matters for an ideal detector; it is kept for the record.
    n_views : int
        Projections over a full turn (clinical scanners take ~1000-2300; 720 sample a
        512-pixel field well enough for noise).
    bowtie_radius_mm : float
        The bowtie equalises a water cylinder of this radius: a ray at distance t from the
        axis passes through ``2 (r - sqrt(r^2 - t^2))`` mm of water-equivalent filter.
    bowtie_max_mm : float
        Cap on the bowtie's water-equivalent thickness at the fan's edge.
    """

    source_to_iso_mm: float = 541.0
    source_to_detector_mm: float = 949.0
    n_views: int = 720
    bowtie_radius_mm: float = 180.0
    bowtie_max_mm: float = 150.0

    def __post_init__(self) -> None:
        if not self.source_to_detector_mm > self.source_to_iso_mm > 0:
            raise ValueError(
                "need source_to_detector_mm > source_to_iso_mm > 0, got "
                f"{self.source_to_detector_mm} and {self.source_to_iso_mm}"
            )
        if isinstance(self.n_views, bool) or int(self.n_views) != self.n_views:
            raise ValueError(f"n_views must be an integer, got {self.n_views!r}")
        if self.n_views < 8:
            raise ValueError(f"n_views must be >= 8, got {self.n_views}")
        if self.bowtie_radius_mm <= 0 or self.bowtie_max_mm < 0:
            raise ValueError("bowtie_radius_mm must be > 0 and bowtie_max_mm >= 0")

    def bowtie_mm(self, distance_mm: np.ndarray) -> np.ndarray:
        """Water-equivalent bowtie thickness for rays at ``distance_mm`` from the axis."""
        t = np.abs(np.asarray(distance_mm, dtype=np.float64))
        r = self.bowtie_radius_mm
        inside = 2.0 * (r - np.sqrt(np.clip(r * r - t * t, 0.0, None)))
        return np.minimum(np.where(t < r, inside, 2.0 * r), self.bowtie_max_mm)


WINDOWS = ("cosine", "gaussian", "butterworth")


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: the ramp times an apodisation window.

    ``window="cosine"``: ``(1 + boost (f/fc)^2) * (1 + cos(pi f / fc)) / 2`` below ``fc``,
    0 above: ``cutoff`` 0.4-0.6 of Nyquist with no boost is smooth (soft-tissue kernels such
    as B20f / SOFT), 1.0 with boost ~1 sharp (B60f / BONE). ``window="gaussian"``:
    ``(1 + boost (f/fc)^2) * 2^(-(f/fc)^2)``, half gain at ``fc`` and no hard cut-off, so a
    high ``fc`` keeps noise up to the Nyquist frequency (lung and bone kernels).
    ``window="butterworth"``: ``1 / (1 + (f / fc)^(2 order))``, another family (used to make
    test noise differ from training noise).

    Parameters
    ----------
    cutoff : float
        ``fc`` as a fraction of the Nyquist frequency, in (0, 1].
    boost : float
        High-frequency boost of the cosine and Gaussian windows (>= 0), ignored by
        Butterworth.
    window : str
        ``"cosine"``, ``"gaussian"`` or ``"butterworth"``.
    order : int
        Butterworth order.
    """

    cutoff: float = 0.8
    boost: float = 0.0
    window: str = "cosine"
    order: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.cutoff <= 1.0:
            raise ValueError(f"cutoff must be in (0, 1], got {self.cutoff}")
        if self.boost < 0:
            raise ValueError(f"boost must be >= 0, got {self.boost}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.order < 1:
            raise ValueError(f"order must be >= 1, got {self.order}")

    def response(self, frequency: np.ndarray) -> np.ndarray:
        """Window value at ``frequency`` in cycles per sample (|f| <= 0.5 is Nyquist)."""
        f = np.abs(np.asarray(frequency, dtype=np.float64)) / 0.5  # fraction of Nyquist
        fc = self.cutoff
        if self.window == "butterworth":
            return 1.0 / (1.0 + (f / fc) ** (2 * self.order))
        if self.window == "gaussian":
            return np.exp2(-((f / fc) ** 2)) * (1.0 + self.boost * (f / fc) ** 2)
        cosine = np.where(f < fc, 0.5 * (1.0 + np.cos(np.pi * np.minimum(f / fc, 1.0))), 0.0)
        return cosine * (1.0 + self.boost * (f / fc) ** 2)


def _ramp_kernel(n_detectors: int, kernel: Kernel) -> tuple[np.ndarray, int]:
    """Spatial band-limited ramp (sample spacing 1) times ``kernel``'s window, zero-padded
    to a power of two >= 2 n_det (so the circular convolution does not wrap)."""
    size = max(64, int(2 ** np.ceil(np.log2(2 * n_detectors))))
    # h[0] = 1/4, h[n] = -1/(pi n)^2 for odd n, 0 for even n (Kak & Slaney eq. 61, tau = 1).
    n = np.fft.fftfreq(size, d=1.0 / size)
    h = np.zeros(size)
    h[0] = 0.25
    odd = (np.abs(n) % 2) == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = np.real(np.fft.fft(h)) * kernel.response(np.fft.fftfreq(size))
    return np.real(np.fft.ifft(response)), size


class FanBeamSimulator:
    """Low-dose noise for one axial slice in a fan-beam geometry; the projection is cached.

    Parameters
    ----------
    image_hu : np.ndarray
        One square slice in HU (rescale applied). Values below -1000 (air, padding) are
        treated as air.
    pixel_spacing_mm : float
        In-plane pixel size.
    geometry : FanBeamGeometry
        The scanner.
    device : str or torch.device
        Where to compute ("cpu" or "cuda").

    Attributes
    ----------
    sinogram : torch.Tensor
        Line integrals ``p`` (float32, dimensionless), shape ``(n_views, n_detectors)``.
    fov_mask : np.ndarray
        Pixels inside the scan field of view (the circle the fan covers), boolean.
    """

    def __init__(
        self,
        image_hu: np.ndarray,
        pixel_spacing_mm: float,
        geometry: FanBeamGeometry | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        image = np.asarray(image_hu, dtype=np.float32)
        if image.ndim != 2 or image.shape[0] != image.shape[1] or image.shape[0] < 16:
            raise ValueError(f"image_hu must be a square slice of >= 16 pixels, got {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError("image_hu must contain only finite values")
        if not (np.isfinite(pixel_spacing_mm) and pixel_spacing_mm > 0):
            raise ValueError(f"pixel_spacing_mm must be > 0, got {pixel_spacing_mm!r}")
        self.geometry = geometry or FanBeamGeometry()
        self.device = torch.device(device)
        self.size = image.shape[0]
        self.spacing = float(pixel_spacing_mm)
        g = self.geometry
        half_width = self.size * self.spacing / 2.0  # image edge to centre, mm
        self._half_width = half_width
        radius = half_width * math.sqrt(2.0)  # rays must cover the corners
        if radius >= 0.95 * g.source_to_iso_mm:
            raise ValueError(f"a {2 * half_width:.0f} mm field does not fit this geometry")
        # Equiangular detector: ray spacing at the axis equals the pixel size.
        self.fan_step = self.spacing / g.source_to_iso_mm
        gamma_max = math.asin(radius / g.source_to_iso_mm)
        n_det = 2 * math.ceil(gamma_max / self.fan_step) + 1
        self.gammas = (np.arange(n_det) - n_det // 2) * self.fan_step
        self.betas = np.arange(g.n_views) * (2.0 * math.pi / g.n_views)
        self._radius = radius

        mu = np.clip(MU_WATER_PER_MM * (1.0 + image / 1000.0), 0.0, None).astype(np.float32)
        self.sinogram = self._project(torch.from_numpy(mu).to(self.device))
        self._exp_p = torch.exp(self.sinogram.double())
        distance = g.source_to_iso_mm * np.sin(self.gammas)
        self._bowtie_transmission = torch.from_numpy(
            np.exp(-MU_WATER_PER_MM * g.bowtie_mm(distance))
        ).to(self.device)

        offsets = (np.arange(self.size) - (self.size - 1) / 2.0) * self.spacing
        ys, xs = np.meshgrid(-offsets, offsets, indexing="ij")  # y up, x right (mm)
        self._x = torch.from_numpy(xs.astype(np.float32)).to(self.device).ravel()
        self._y = torch.from_numpy(ys.astype(np.float32)).to(self.device).ravel()
        self.fov_mask = (xs**2 + ys**2) <= (g.source_to_iso_mm * math.sin(gamma_max)) ** 2

    # -- geometry --------------------------------------------------------------------

    def _source(self, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.geometry.source_to_iso_mm
        return r * torch.cos(beta), r * torch.sin(beta)

    def _project(self, mu: torch.Tensor) -> torch.Tensor:
        """Ray-driven forward projection: bilinear samples every pixel along each ray."""
        step = self.spacing
        r = self.geometry.source_to_iso_mm
        s = torch.arange(r - self._radius, r + self._radius + step, step, device=self.device)
        gammas = torch.from_numpy(self.gammas).to(self.device, torch.float32)
        image = mu[None, None]
        out = []
        for start in range(0, len(self.betas), _VIEW_CHUNK):
            beta = torch.from_numpy(self.betas[start : start + _VIEW_CHUNK]).to(
                self.device, torch.float32
            )
            sx, sy = self._source(beta)
            # Ray direction: from the source through the axis, turned by the fan angle.
            angle = beta[:, None] + math.pi + gammas[None, :]
            px = sx[:, None, None] + s[None, None, :] * torch.cos(angle)[:, :, None]
            py = sy[:, None, None] + s[None, None, :] * torch.sin(angle)[:, :, None]
            # grid_sample coordinates (align_corners=False): x right, row index downwards.
            grid = torch.stack((px / self._half_width, -py / self._half_width), dim=-1)
            samples = F.grid_sample(
                image.expand(len(beta), -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            out.append(samples[:, 0].sum(dim=-1) * step)
        return torch.cat(out)

    # -- reconstruction ----------------------------------------------------------------

    def reconstruct(self, sinogram: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        """Equiangular fan-beam FBP of a sinogram of this geometry, in 1/mm.

        Kak & Slaney eq. (3.4.1): weight each ray by ``D cos(gamma)``, convolve along the
        detector with ``g(gamma) = (gamma / sin gamma)^2 h(gamma) / 2`` (h the windowed
        ramp), and back-project with ``1 / L^2`` (L the source-to-pixel distance).
        """
        return self.reconstruct_many([sinogram], [kernel])[0]

    def reconstruct_many(
        self, sinograms: Sequence[torch.Tensor], kernels: Sequence[Kernel]
    ) -> torch.Tensor:
        """:meth:`reconstruct` of several sinograms, each with its kernel: (n, y, x) in 1/mm.

        The back-projection's per-pixel geometry is computed once for all of them.
        """
        if len(sinograms) != len(kernels) or not sinograms:
            raise ValueError("give one kernel per sinogram, and at least one sinogram")
        filtered = torch.stack(
            [self._filter(sino, kernel) for sino, kernel in zip(sinograms, kernels, strict=True)],
            dim=1,
        )  # (views, n, detectors)
        n_det = len(self.gammas)
        alpha = self.fan_step
        image = torch.zeros((filtered.shape[1], self._x.numel()), device=self.device)
        for start in range(0, len(self.betas), _VIEW_CHUNK):
            beta = torch.from_numpy(self.betas[start : start + _VIEW_CHUNK]).to(
                self.device, torch.float32
            )
            sx, sy = self._source(beta)
            dx = self._x[None, :] - sx[:, None]
            dy = self._y[None, :] - sy[:, None]
            # Fan angle of each pixel relative to the central ray (pointing at the axis).
            gamma = torch.atan2(dy, dx) - (beta[:, None] + math.pi)
            gamma = torch.remainder(gamma + math.pi, 2 * math.pi) - math.pi
            index = gamma / alpha + n_det // 2
            grid_x = (2.0 * index + 1.0) / n_det - 1.0  # align_corners=False
            rows = filtered[start : start + len(beta)]  # (chunk, n, detectors)
            grid = torch.stack((grid_x, torch.zeros_like(grid_x)), dim=-1)[:, None]
            values = F.grid_sample(
                rows[:, :, None, :], grid, mode="bilinear", padding_mode="zeros",
                align_corners=False,
            )[:, :, 0]  # fmt: skip
            image += (values / (dx * dx + dy * dy)[:, None]).sum(dim=0)
        # d(beta) over the full turn; the 1/2 of the redundant 360-degree data is in g.
        image *= 2.0 * math.pi / len(self.betas)
        return image.reshape(-1, self.size, self.size)

    def _filter(self, sinogram: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        """Cosine weighting and the fan-beam ramp convolution along the detector."""
        sino = torch.as_tensor(sinogram, device=self.device, dtype=torch.float32)
        expected = (len(self.betas), len(self.gammas))
        if tuple(sino.shape) != expected:
            raise ValueError(f"sinogram must have shape {expected}, got {tuple(sino.shape)}")
        r = self.geometry.source_to_iso_mm
        alpha = self.fan_step
        n_det = len(self.gammas)
        h, size = _ramp_kernel(n_det, kernel)
        lag = np.fft.fftfreq(size, d=1.0 / size) * alpha
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(lag == 0, 1.0, (lag / np.sin(lag)) ** 2)
        # h_alpha(n) = h_1(n) / alpha^2; Q = alpha * sum R' g, g = 0.5 factor h_alpha.
        g = torch.from_numpy(0.5 * factor * h / alpha).to(self.device, torch.float32)
        weighted = sino * (r * torch.cos(torch.from_numpy(self.gammas).to(sino)))[None, :]
        return torch.fft.irfft(
            torch.fft.rfft(weighted, n=size, dim=-1) * torch.fft.rfft(g), n=size, dim=-1
        )[:, :n_det]

    # -- noise -------------------------------------------------------------------------

    def noise_sinogram(
        self,
        dose_fraction: float,
        i0: float,
        electronic_noise_var: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Line-integral noise a dose of ``dose_fraction`` adds (Yu et al. 2012).

        Counts at full dose are ``Poisson(I0 b(gamma) exp(-p)) + Normal(0, var_e)`` with
        ``b`` the bowtie transmission; the extra variance at dose ``a`` is
        ``(1/a - 1) e / I0' + (1/a^2 - 1) var_e e^2 / I0'^2``, ``e = exp(p)``,
        ``I0' = I0 b(gamma)``, drawn as zero-mean Gaussian (clinical counts).
        """
        a = float(dose_fraction)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction!r}")
        if not (np.isfinite(i0) and i0 > 0):
            raise ValueError(f"i0 must be > 0, got {i0!r}")
        if not (np.isfinite(electronic_noise_var) and electronic_noise_var >= 0):
            raise ValueError(f"electronic_noise_var must be >= 0, got {electronic_noise_var!r}")
        scale = self._exp_p / (i0 * self._bowtie_transmission[None, :])
        variance = (1.0 / a - 1.0) * scale + (1.0 / a**2 - 1.0) * electronic_noise_var * scale**2
        draw = torch.randn(
            variance.shape, generator=generator, device=self.device, dtype=torch.float64
        )
        return (torch.sqrt(variance) * draw).float()

    def extra_noise(
        self,
        dose_fraction: float,
        i0: float,
        kernel: Kernel,
        generator: torch.Generator,
        electronic_noise_var: float = 20.0,
    ) -> np.ndarray:
        """Image-domain noise (HU, float32) a dose of ``dose_fraction`` adds; 0 outside the
        field of view."""
        return self.extra_noise_many([dose_fraction], i0, [kernel], generator,
                                     electronic_noise_var)[0]  # fmt: skip

    def extra_noise_many(
        self,
        dose_fractions: Sequence[float],
        i0: float,
        kernels: Sequence[Kernel],
        generator: torch.Generator,
        electronic_noise_var: float = 20.0,
    ) -> np.ndarray:
        """:meth:`extra_noise` for several doses and kernels, (n, y, x): the same draws, in
        the same order, as calling it once per pair, with one back-projection for all."""
        sinos = [
            self.noise_sinogram(dose, i0, electronic_noise_var, generator)
            for dose in dose_fractions
        ]
        images = self.reconstruct_many(sinos, kernels) * (1000.0 / MU_WATER_PER_MM)
        out = images.cpu().numpy().astype(np.float32)
        out[:, ~self.fov_mask] = 0.0
        return out
