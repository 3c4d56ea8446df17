"""Projection-domain low-dose CT simulation: add dose-dependent noise to the line integrals."""

# Method: Yu L, Shiung M, Jondal D, McCollough CH. "Development and validation of a practical
# lower-dose simulation tool for optimizing computed tomography scan protocols." J Comput
# Assist Tomogr 2012;36(4):477-487 (Yu et al. 2012 below). The normal-dose scan is
# re-projected, the extra noise a lower dose would bring (quantum + electronic) is drawn per
# detector bin, and, because filtered back projection (FBP) is linear, the low-dose image is
# the normal-dose image plus the FBP of the noise sinogram alone.
#
# Geometry: a parallel-beam re-projection of one axial slice (the clinical fan-beam data are
# not available from images). I0 is therefore an *effective* flux per detector bin and view
# of this geometry, which is why ``calibrate_i0`` fixes it from a measured noise level
# instead of assuming a scanner's value.

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from skimage.transform import radon

# Linear attenuation coefficient of water at ~70 keV, the effective energy of a 120 kVp
# spectrum: (mu/rho) = 0.193 cm^2/g (NIST XCOM, Berger et al.), rho = 1 g/cm^3.
MU_WATER_PER_MM: float = 0.0192

# Reconstruction filters: the ramp times an apodisation window (Kak & Slaney 1988, ch. 3).
FILTER_NAMES: tuple[str, ...] = ("ramp", "shepp-logan", "hann", "hamming")

# Forward projection runs in angle chunks on this many threads (skimage's warp releases the
# GIL for part of its work): about 1.3x faster on two cores.
_PROJECTION_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ScanGeometry:
    """Parallel-beam geometry of the re-projection.

    Parameters
    ----------
    n_views : int
        Projection angles, equally spaced over 180 degrees (parallel beam needs only a half
        turn). 720 views sample a 512-pixel field adequately for noise (the Nyquist
        requirement pi/2 * N ~ 800 views matters for edges, not for the independent per-view
        noise) and keep one 512 x 512 back projection near one second on two cores.
    pixel_spacing_mm : float
        In-plane pixel size (square pixels), which is also the detector bin width.
    filter_name : str
        Apodisation window of the ramp filter: ``"ramp"``, ``"shepp-logan"``, ``"hann"`` or
        ``"hamming"``. Hann gives a smooth, soft-tissue-like noise texture.
    """

    n_views: int = 720
    pixel_spacing_mm: float = 0.7
    filter_name: str = "hann"

    def __post_init__(self) -> None:
        if isinstance(self.n_views, bool) or not isinstance(self.n_views, int | np.integer):
            raise ValueError(f"n_views must be an integer, got {self.n_views!r}")
        if self.n_views < 2:
            raise ValueError(f"n_views must be >= 2, got {self.n_views}")
        if not np.isfinite(self.pixel_spacing_mm) or self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel_spacing_mm must be > 0, got {self.pixel_spacing_mm}")
        if self.filter_name not in FILTER_NAMES:
            raise ValueError(f"filter_name must be one of {FILTER_NAMES}, got {self.filter_name!r}")


def extra_line_integral_variance(
    exp_p: np.ndarray, dose_fraction: float, i0: float, electronic_noise_var: float
) -> np.ndarray:
    """Variance of the noise to add to normal-dose line integrals to simulate a lower dose.

    Parameters
    ----------
    exp_p : np.ndarray
        ``exp(p)`` of the normal-dose line integrals ``p``.
    dose_fraction : float
        Simulated dose over normal dose, ``a`` in (0, 1].
    i0 : float
        Incident photons per detector bin (and view) at normal dose.
    electronic_noise_var : float
        Variance of the additive electronic noise, in photon counts squared.

    Returns
    -------
    np.ndarray
        ``((1 - a) / a) * exp(p) / I0 * (1 + ((1 + a) / a) * var_e * exp(p) / I0)``.

    Notes
    -----
    Counts at normal dose are ``N = Poisson(I0 exp(-p)) + Normal(0, var_e)``; the measured
    line integral is ``p_hat = -ln(N / I0)``. To first order (delta method)
    ``Var(p_hat) = Var(N) / E[N]^2 = exp(p) / I0 + var_e exp(2p) / I0^2``. At dose ``a`` the
    flux is ``a I0`` and the electronic noise is unchanged, so
    ``Var_a = exp(p) / (a I0) + var_e exp(2p) / (a I0)^2``. Independent noise added to the
    normal-dose data must supply the difference:
    ``Var_a - Var_1 = (1/a - 1) exp(p)/I0 + (1/a^2 - 1) var_e exp(2p)/I0^2``, and
    ``1/a^2 - 1 = ((1 - a)/a) ((1 + a)/a)`` gives the factored form above (the noise model
    of Yu et al. 2012, with the electronic noise expressed in detected-photon units).
    """
    scale = np.asarray(exp_p, dtype=np.float64) / i0
    a = dose_fraction
    return ((1.0 - a) / a) * scale * (1.0 + ((1.0 + a) / a) * electronic_noise_var * scale)


def _filter_response(n_detectors: int, filter_name: str) -> np.ndarray:
    """Frequency response of the ramp filter with its window, for zero-padded projections."""
    # Zero-pad to >= 2 n_det so the circular convolution does not wrap (Kak & Slaney ch. 3).
    size = max(64, int(2 ** np.ceil(np.log2(2 * n_detectors))))
    # The band-limited ramp sampled in space (Kak & Slaney eq. 61, tau = 1): h[0] = 1/4,
    # h[n] = -1/(pi n)^2 for odd n, 0 for even n; its DFT is ~|f| without a DC offset.
    n = np.concatenate(
        (np.arange(1, size // 2 + 1, 2, dtype=np.int64), np.arange(size // 2 - 1, 0, -2))
    )
    kernel = np.zeros(size)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (np.pi * n) ** 2
    response = np.real(np.fft.fft(kernel))
    freq = np.fft.fftfreq(size)  # cycles per detector bin, |f| <= 0.5
    if filter_name == "shepp-logan":
        response *= np.sinc(freq)  # sin(pi f)/(pi f): Shepp & Logan 1974
    elif filter_name == "hann":
        response *= 0.5 * (1.0 + np.cos(2.0 * np.pi * freq))  # zero at Nyquist
    elif filter_name == "hamming":
        response *= 0.54 + 0.46 * np.cos(2.0 * np.pi * freq)
    return response


def _check_positive(name: str, value: float) -> float:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_dose_fraction(dose_fraction: float) -> float:
    if not np.isfinite(dose_fraction) or not 0.0 < dose_fraction <= 1.0:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction!r}")
    return float(dose_fraction)


def _check_electronic_noise(electronic_noise_var: float) -> float:
    if not np.isfinite(electronic_noise_var) or electronic_noise_var < 0:
        raise ValueError(f"electronic_noise_var must be >= 0, got {electronic_noise_var!r}")
    return float(electronic_noise_var)


class LowDoseSimulator:
    """Low-dose noise simulator for one axial slice, caching its re-projected sinogram.

    The constructor forward-projects the slice once; every draw then costs one noise
    sinogram and one filtered back projection, so several dose levels and seeds are cheap.

    Parameters
    ----------
    image_hu : np.ndarray
        One square 2-D slice in Hounsfield units (rescale slope/intercept applied).
    geometry : ScanGeometry
        Views, pixel spacing and reconstruction filter.

    Attributes
    ----------
    sinogram : np.ndarray
        Normal-dose line integrals ``p`` (dimensionless), shape ``(n_views, n_detectors)``,
        read-only. Detector bins have the pixel width and cover the image diagonal, so rays
        through the corners outside the reconstruction circle are still attenuated.
    fov_mask : np.ndarray
        The reconstruction circle inscribed in the image (boolean, read-only). FBP
        reconstructs only inside it, as a scanner's field of view: extra noise is 0 outside.

    Notes
    -----
    HU are mapped to ``mu = MU_WATER_PER_MM * (1 + HU / 1000)``, clipped at 0 so air and
    padding values (-1024, -2048, -3024) attenuate nothing. The added noise is drawn as
    zero-mean Gaussian per bin, the standard normal approximation at clinical counts
    (Yu et al. 2012), so the simulated HU are unbiased.
    """

    def __init__(self, image_hu: np.ndarray, geometry: ScanGeometry) -> None:
        image = np.asarray(image_hu, dtype=np.float64)
        if image.ndim != 2 or image.shape[0] != image.shape[1]:
            raise ValueError(f"image_hu must be a square 2-D slice, got shape {image.shape}")
        if image.shape[0] < 8:
            raise ValueError(f"image_hu must be at least 8 x 8 pixels, got {image.shape}")
        if not np.all(np.isfinite(image)):
            raise ValueError("image_hu must contain only finite values")
        if not isinstance(geometry, ScanGeometry):
            raise ValueError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        self.geometry = geometry
        self.image_hu = image.copy()
        self.image_hu.flags.writeable = False
        size = image.shape[0]
        self._theta = np.arange(geometry.n_views) * (np.pi / geometry.n_views)

        mu_per_mm = np.clip(MU_WATER_PER_MM * (1.0 + image / 1000.0), 0.0, None)
        # radon sums pixel values along each ray (pixel-length steps, bilinear rotation);
        # times the pixel size this is the line integral in mm * (1/mm). circle=False pads
        # to the diagonal so rays through the corners (table, arms) are attenuated too.
        chunks = np.array_split(np.degrees(self._theta), _PROJECTION_THREADS)
        with ThreadPoolExecutor(max_workers=_PROJECTION_THREADS) as pool:
            parts = list(pool.map(lambda deg: radon(mu_per_mm, theta=deg, circle=False), chunks))
        sinogram = np.ascontiguousarray(np.concatenate(parts, axis=1).T)
        sinogram *= geometry.pixel_spacing_mm
        sinogram.flags.writeable = False
        self.sinogram: np.ndarray = sinogram
        self._exp_p = np.exp(sinogram)

        # The filter as a frequency response and as its periodic spatial kernel h, for the
        # exact noise variance: sum_k h[i-k]^2 v[k] and sum_k h[i-k] h[i+1-k] v[k].
        self._filter = _filter_response(sinogram.shape[1], geometry.filter_name)
        kernel = np.real(np.fft.ifft(self._filter))
        self._kernel_sq_fft = np.fft.rfft(kernel**2)
        self._kernel_lag_fft = np.fft.rfft(kernel * np.roll(kernel, -1))

        # Pixel-centre coordinates (origin at index size // 2, as in skimage.transform.radon)
        # of the pixels inside the inscribed reconstruction circle.
        offsets = np.arange(size) - size // 2
        rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
        fov = rows**2 + cols**2 <= (size // 2) ** 2
        fov.flags.writeable = False
        self.fov_mask: np.ndarray = fov

    @property
    def n_detectors(self) -> int:
        """Detector bins per view."""
        return int(self.sinogram.shape[1])

    def _pixel_coordinates(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column and row offsets of the pixels of ``mask`` (x and y of the projection)."""
        rows, cols = np.nonzero(mask)
        centre = mask.shape[0] // 2
        return (cols - centre).astype(np.float64), (rows - centre).astype(np.float64)

    def _filter_rows(self, sinogram: np.ndarray, response: np.ndarray) -> np.ndarray:
        """Circular convolution of each zero-padded view with a filter given by its rfft."""
        size = self._filter.size
        n_det = sinogram.shape[-1]
        return np.fft.irfft(np.fft.rfft(sinogram, n=size, axis=-1) * response, n=size, axis=-1)[
            ..., :n_det
        ]

    def reconstruct(self, line_integrals: np.ndarray) -> np.ndarray:
        """Filtered back projection of a sinogram of this geometry.

        Parameters
        ----------
        line_integrals : np.ndarray
            Line integrals of ``mu`` (dimensionless, i.e. mm * 1/mm), shape
            ``(n_views, n_detectors)``, as :attr:`sinogram`.

        Returns
        -------
        np.ndarray
            ``mu`` in 1/mm on the image grid; 0 outside :attr:`fov_mask`.
        """
        sino = np.asarray(line_integrals, dtype=np.float64)
        if sino.shape != self.sinogram.shape:
            raise ValueError(
                f"line_integrals must have shape {self.sinogram.shape}, got {sino.shape}"
            )
        n_views, n_det = sino.shape
        # Pixel units for the discrete FBP (kernel with tau = 1): divide by the pixel size.
        response = self._filter[: self._filter.size // 2 + 1]
        filtered = self._filter_rows(sino / self.geometry.pixel_spacing_mm, response)
        detector = np.arange(n_det, dtype=np.float64) - n_det // 2
        x, y = self._pixel_coordinates(self.fov_mask)
        values = np.zeros(x.size)
        # Back projection with linear interpolation; t = x cos(theta) - y sin(theta) with
        # x the column and y the row offset: the convention of skimage.transform.radon.
        for view, angle in enumerate(self._theta):
            t = x * np.cos(angle) - y * np.sin(angle)
            values += np.interp(t, detector, filtered[view], left=0.0, right=0.0)
        # f = integral over [0, pi) of the filtered projections: d(theta) = pi / n_views.
        image = np.zeros(self.fov_mask.shape)
        image[self.fov_mask] = values * (np.pi / n_views)
        return image

    def _fbp_variance(self, variances: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Exact variance (HU^2) at the pixels of ``mask`` of the FBP of independent noise.

        ``variances`` has shape (k, n_views, n_detectors); the result (k, n_pixels). A pixel
        value is sum over views of (1-w) q[i] + w q[i+1] with q = h * noise (h the filter
        kernel, i, w the interpolation index and weight), so its variance is
        sum over views of (1-w)^2 (h^2 * v)[i] + w^2 (h^2 * v)[i+1] + 2 w (1-w) (g * v)[i]
        with g[m] = h[m] h[m+1]: two convolutions and one back projection.
        """
        n_views, n_det = self.sinogram.shape
        squared = self._filter_rows(variances, self._kernel_sq_fft)
        lagged = self._filter_rows(variances, self._kernel_lag_fft)
        x, y = self._pixel_coordinates(mask)
        result = np.zeros((variances.shape[0], x.size))
        for view, angle in enumerate(self._theta):
            t = x * np.cos(angle) - y * np.sin(angle) + n_det // 2
            index = np.clip(np.floor(t).astype(np.int64), 0, n_det - 2)
            w = t - index
            result += (
                (1.0 - w) ** 2 * squared[:, view, index]
                + w**2 * squared[:, view, index + 1]
                + 2.0 * w * (1.0 - w) * lagged[:, view, index]
            )
        scale = (np.pi / n_views) / self.geometry.pixel_spacing_mm * (1000.0 / MU_WATER_PER_MM)
        return result * scale**2

    def line_integral_noise_variance(
        self, dose_fraction: float, i0: float, electronic_noise_var: float
    ) -> np.ndarray:
        """Per-bin variance of the added line-integral noise, shape ``(n_views, n_detectors)``.

        See :func:`extra_line_integral_variance`.
        """
        a = _check_dose_fraction(dose_fraction)
        flux = _check_positive("i0", i0)
        var_e = _check_electronic_noise(electronic_noise_var)
        return extra_line_integral_variance(self._exp_p, a, flux, var_e)

    def noise_variance_map(
        self, dose_fraction: float, i0: float, electronic_noise_var: float
    ) -> np.ndarray:
        """Expected variance of :meth:`extra_noise` at every pixel, in HU^2 (exact, no draws).

        Parameters
        ----------
        dose_fraction, i0, electronic_noise_var
            As for :meth:`extra_noise`.

        Returns
        -------
        np.ndarray
            Per-pixel variance in HU^2, image shape, 0 outside :attr:`fov_mask`. Costs
            about two back projections.
        """
        variance = self.line_integral_noise_variance(dose_fraction, i0, electronic_noise_var)
        image = np.zeros(self.fov_mask.shape)
        image[self.fov_mask] = self._fbp_variance(variance[None], self.fov_mask)[0]
        return image

    def extra_noise(
        self,
        dose_fraction: float,
        i0: float,
        electronic_noise_var: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Draw the image-domain noise a dose of ``dose_fraction`` would add, in HU.

        Parameters
        ----------
        dose_fraction : float
            Simulated dose over normal dose, in (0, 1]; 1 gives exactly zero noise.
        i0 : float
            Incident photons per detector bin and view at normal dose (> 0).
        electronic_noise_var : float
            Electronic noise variance in photon counts squared (>= 0).
        rng : np.random.Generator
            Source of the Gaussian draws; the same seed gives the same noise.

        Returns
        -------
        np.ndarray
            Extra noise in HU (float64), same shape as the image, 0 outside the
            reconstruction circle.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        variance = self.line_integral_noise_variance(dose_fraction, i0, electronic_noise_var)
        if dose_fraction == 1.0:
            return np.zeros(self.fov_mask.shape)
        noise = np.sqrt(variance) * rng.standard_normal(variance.shape)
        # FBP is linear: FBP(p + dp) = FBP(p) + FBP(dp); HU = 1000 * mu / mu_water - 1000.
        return self.reconstruct(noise) * (1000.0 / MU_WATER_PER_MM)

    def low_dose(
        self,
        dose_fraction: float,
        i0: float,
        electronic_noise_var: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """The simulated low-dose slice in HU: the input image plus :meth:`extra_noise`."""
        return self.image_hu + self.extra_noise(dose_fraction, i0, electronic_noise_var, rng)


def calibrate_i0(
    simulator: LowDoseSimulator,
    roi: np.ndarray,
    target_sigma_hu: float,
    dose_fraction: float,
    electronic_noise_var: float = 10.0,
    seed: int = 0,
) -> float:
    """Find the normal-dose flux I0 for which the simulated extra noise has a target sigma.

    Parameters
    ----------
    simulator : LowDoseSimulator
        The slice to simulate on.
    roi : np.ndarray
        Boolean mask (image shape) of a uniform region inside the reconstruction circle.
    target_sigma_hu : float
        Wanted standard deviation of the *extra* noise in the ROI, in HU (> 0), as the root
        mean of the per-pixel variance; e.g. for a quarter dose, sqrt(3) times the measured
        full-dose sigma (quantum noise variance scales as 1/a: 4 - 1 = 3).
    dose_fraction : float
        Dose fraction in (0, 1) at which the target applies.
    electronic_noise_var : float
        Electronic noise variance in photon counts squared.
    seed : int
        Unused: the calibration uses the exact expected variance, so it is deterministic.
        Kept for callers written against a Monte-Carlo calibration.

    Returns
    -------
    float
        I0 in photons per detector bin and view at normal dose.

    Notes
    -----
    The per-bin variance is ``A / I0 + B / I0^2`` with ``A = ((1-a)/a) exp(p)`` and
    ``B = ((1-a)/a) ((1+a)/a) var_e exp(2p)``, and the image variance is linear in the
    per-bin variances (independent bins, linear FBP). So the ROI-mean variance is exactly
    ``alpha / I0 + beta / I0^2``, with alpha and beta computed once by
    :meth:`LowDoseSimulator.noise_variance_map`'s propagation over the ROI pixels only, and
    I0 solves a quadratic in 1/I0. A search on single seeded draws (secant in log I0) would
    instead fit that draw's sampling error: on a 435-pixel liver ROI of a 512^2 slice, one
    draw's sigma varied by up to 28 % between seeds.
    """
    del seed  # deterministic: see Notes
    if not isinstance(simulator, LowDoseSimulator):
        raise ValueError(f"simulator must be a LowDoseSimulator, got {type(simulator).__name__}")
    mask = np.asarray(roi)
    if mask.dtype != np.bool_ or mask.shape != simulator.fov_mask.shape:
        raise ValueError(
            f"roi must be a boolean mask of shape {simulator.fov_mask.shape}, "
            f"got {mask.dtype} {mask.shape}"
        )
    if not mask.any():
        raise ValueError("roi must contain at least one pixel")
    if np.any(mask & ~simulator.fov_mask):
        raise ValueError("roi must lie inside the reconstruction circle (fov_mask)")
    target = _check_positive("target_sigma_hu", target_sigma_hu)
    a = _check_dose_fraction(dose_fraction)
    if a == 1.0:
        raise ValueError("dose_fraction must be < 1 to calibrate: a full dose adds no noise")
    var_e = _check_electronic_noise(electronic_noise_var)

    # Per-bin variance at I0 = 1: quantum part A and electronic part B (I0 factored out).
    quantum = extra_line_integral_variance(simulator._exp_p, a, 1.0, 0.0)
    electronic = quantum * ((1.0 + a) / a) * var_e * simulator._exp_p
    alpha, beta = simulator._fbp_variance(np.stack([quantum, electronic]), mask).mean(axis=1)
    # beta u^2 + alpha u = target^2 with u = 1 / I0; the stable root of the quadratic.
    target_var = target * target
    u = 2.0 * target_var / (alpha + np.sqrt(alpha * alpha + 4.0 * beta * target_var))
    return float(1.0 / u)


def noise_power_spectrum(
    noise: np.ndarray,
    roi_size: int,
    pixel_spacing_mm: float,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged 2-D noise power spectrum from square ROIs of noise-only images.

    Parameters
    ----------
    noise : np.ndarray
        One noise-only image (2-D) or a stack of them (n, y, x), e.g. simulated extra noise
        or the difference of two repeated scans divided by sqrt(2).
    roi_size : int
        Side of the square ROIs in pixels (>= 4). ROIs are placed on a grid with half-ROI
        stride (50 % overlap).
    pixel_spacing_mm : float
        Pixel size in mm (square pixels).
    mask : np.ndarray, optional
        Boolean (y, x) or (n, y, x) mask; only ROIs entirely inside it are used (a uniform
        region, or the reconstruction circle). Default: the whole image.

    Returns
    -------
    frequencies : np.ndarray
        Radial spatial frequencies in cycles/mm, 0 to Nyquist in steps of 1 / (roi_size dx).
    nps : np.ndarray
        Radially averaged NPS in HU^2 mm^2.

    Notes
    -----
    ``NPS(fx, fy) = (dx dy / (Nx Ny)) <|DFT(ROI - mean(ROI))|^2>`` averaged over ROIs
    (Boedeker, Cooper & McNitt-Gray, Phys Med Biol 2007; AAPM TG-233, Samei et al., Med Phys
    2019); the integral of the 2-D NPS over frequency equals the pixel variance.
    """
    stack = np.asarray(noise, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"noise must be 2-D or 3-D (n, y, x), got shape {stack.shape}")
    if isinstance(roi_size, bool) or not isinstance(roi_size, int | np.integer) or roi_size < 4:
        raise ValueError(f"roi_size must be an integer >= 4, got {roi_size!r}")
    if roi_size > min(stack.shape[1:]):
        raise ValueError(f"roi_size {roi_size} exceeds the image size {stack.shape[1:]}")
    spacing = _check_positive("pixel_spacing_mm", pixel_spacing_mm)
    if mask is None:
        masks = np.ones(stack.shape, dtype=bool)
    else:
        masks = np.asarray(mask)
        if masks.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got {masks.dtype}")
        try:
            masks = np.broadcast_to(masks, stack.shape)
        except ValueError as error:
            raise ValueError(
                f"mask shape {np.shape(mask)} does not match noise {stack.shape}"
            ) from error

    stride = max(1, roi_size // 2)
    power = np.zeros((roi_size, roi_size))
    count = 0
    for image, valid in zip(stack, masks, strict=True):
        for top in range(0, image.shape[0] - roi_size + 1, stride):
            for left in range(0, image.shape[1] - roi_size + 1, stride):
                window = (slice(top, top + roi_size), slice(left, left + roi_size))
                if not valid[window].all():
                    continue
                roi = image[window]
                power += np.abs(np.fft.fft2(roi - roi.mean())) ** 2
                count += 1
    if count == 0:
        raise ValueError(f"no {roi_size} x {roi_size} ROI fits inside the mask")
    nps_2d = power / count * (spacing * spacing) / (roi_size * roi_size)

    freq = np.fft.fftfreq(roi_size, d=spacing)
    radius = np.hypot(freq[:, None], freq[None, :])
    step = 1.0 / (roi_size * spacing)
    bins = np.rint(radius / step).astype(np.int64).ravel()
    n_bins = roi_size // 2 + 1  # up to the Nyquist frequency 1 / (2 dx)
    keep = bins < n_bins
    sums = np.bincount(bins[keep], weights=nps_2d.ravel()[keep], minlength=n_bins)
    counts = np.bincount(bins[keep], minlength=n_bins)
    return np.arange(n_bins) * step, sums / np.maximum(counts, 1)


def nps_mean_frequency(frequencies: np.ndarray, nps: np.ndarray) -> float:
    """NPS-weighted mean spatial frequency ``sum(f NPS(f)) / sum(NPS(f))``, in cycles/mm.

    The average frequency f_av of the radial NPS (AAPM TG-233, Samei et al., Med Phys 2019):
    a single number for noise texture; lower means coarser, blotchier noise.

    Parameters
    ----------
    frequencies : np.ndarray
        Radial frequencies from :func:`noise_power_spectrum`, equally spaced.
    nps : np.ndarray
        Radial NPS at those frequencies.

    Returns
    -------
    float
        Mean frequency in the units of ``frequencies``.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    power = np.asarray(nps, dtype=np.float64)
    if f.ndim != 1 or f.shape != power.shape:
        raise ValueError(
            f"frequencies and nps must be 1-D of equal length, got {f.shape} and {power.shape}"
        )
    if np.any(power < 0) or not np.isfinite(power).all():
        raise ValueError("nps must be finite and non-negative")
    total = float(power.sum())
    if total <= 0:
        raise ValueError("nps must have positive total power")
    return float((f * power).sum() / total)
