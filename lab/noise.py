"""Clinical-range low-dose noise for real slices: recipes for training and for testing, and
the noise bank training draws from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from models.fanbeam import FanBeamGeometry, FanBeamSimulator, Kernel

_BANK_FORMAT = 1  # bump when the simulation changes, so cached banks are not reused


@dataclass(frozen=True)
class NoiseRecipe:
    """How noise is made: scanner geometries, kernel families, a dose and noise range.

    Each slice is projected in one of ``geometries`` (chosen at random). Each draw picks a
    dose fraction (log-uniform in ``dose_range``) and a kernel (a window of ``windows``,
    cutoff uniform in ``cutoff_range``, boost uniform in ``boost_range`` where the window
    has one), draws the fan-beam noise, and scales it so its σ in the slice's soft tissue
    is ``sigma_hu`` (log-uniform in ``sigma_range_hu``, or the given level). Scaling the
    noise is the same as changing the flux I0 for quantum noise, so σ covers the clinical
    range whatever the patient's size; the dose still sets the share of electronic noise,
    and the kernel the texture.
    """

    name: str
    geometries: tuple[FanBeamGeometry, ...]
    windows: tuple[str, ...] = ("cosine",)
    cutoff_range: tuple[float, float] = (0.45, 1.0)
    boost_range: tuple[float, float] = (0.0, 1.2)
    dose_range: tuple[float, float] = (0.05, 0.5)
    sigma_range_hu: tuple[float, float] = (8.0, 110.0)
    electronic_noise_var: float = 20.0
    i0: float = 2.0e5

    def __post_init__(self) -> None:
        if not self.geometries or not self.windows:
            raise ValueError("a recipe needs at least one geometry and one window")

    def geometry(self, rng: np.random.Generator) -> FanBeamGeometry:
        """A random geometry of this recipe."""
        if len(self.geometries) == 1:  # no draw, so one-geometry noise stays as it was
            return self.geometries[0]
        return self.geometries[int(rng.integers(len(self.geometries)))]

    def kernel(self, rng: np.random.Generator) -> Kernel:
        """A random kernel of this recipe's families."""
        window = self.windows[0]
        if len(self.windows) > 1:  # no draw for one window, so its noise stays as it was
            window = self.windows[int(rng.integers(len(self.windows)))]
        cutoff = float(rng.uniform(*self.cutoff_range))
        boost = float(rng.uniform(*self.boost_range)) if window != "butterworth" else 0.0
        return Kernel(cutoff=cutoff, boost=boost, window=window)

    def dose(self, rng: np.random.Generator) -> float:
        """A random dose fraction, log-uniform."""
        low, high = np.log(self.dose_range[0]), np.log(self.dose_range[1])
        return float(np.exp(rng.uniform(low, high)))

    def sigma(self, rng: np.random.Generator) -> float:
        """A random target σ in soft tissue (HU), log-uniform."""
        low, high = np.log(self.sigma_range_hu[0]), np.log(self.sigma_range_hu[1])
        return float(np.exp(rng.uniform(low, high)))


GE_LIKE = FanBeamGeometry(541.0, 949.0, 720, 180.0, 150.0)
PHILIPS_LIKE = FanBeamGeometry(570.0, 1040.0, 1200, 190.0, 140.0)
SIEMENS_LIKE = FanBeamGeometry(595.0, 1085.6, 1152, 200.0, 120.0)

# Training: GE-like and Philips-like geometries; cosine windows and Gaussian windows (no
# hard cut-off, so sharp draws keep noise up to Nyquist), from smooth to sharp.
TRAINING = NoiseRecipe(
    "training",
    (GE_LIKE, PHILIPS_LIKE),
    windows=("cosine", "gaussian"),
    cutoff_range=(0.35, 1.0),
)
# Testing: a Siemens-like geometry (595 / 1085.6 mm), another bowtie, more views, and
# Butterworth windows: noise made differently from the training noise.
TESTING = NoiseRecipe(
    "testing",
    (SIEMENS_LIKE,),
    windows=("butterworth",),
    cutoff_range=(0.4, 0.9),
    boost_range=(0.0, 0.0),
    dose_range=(0.1, 0.3),
    electronic_noise_var=30.0,
    i0=1.5e5,
)


MIN_SOFT_TISSUE_PX = 500


def soft_tissue_mask(
    image_hu: np.ndarray, fov: np.ndarray | None = None, fall_back_to_body: bool = True
) -> np.ndarray:
    """Soft tissue well inside the body: |HU| < 150 at least 10 pixels from air.

    Falls back to the whole body (HU > -500, eroded) when a slice has little soft tissue
    (under 500 pixels); with ``fall_back_to_body`` False it returns that little instead.
    """
    body = ndimage.binary_erosion(image_hu > -500, iterations=10)
    soft = body & (np.abs(image_hu) < 150)
    if fov is not None:
        soft &= fov
        body &= fov
    if soft.sum() < MIN_SOFT_TISSUE_PX and fall_back_to_body:
        soft = body
    if not soft.any():
        raise ValueError("the slice has no body to measure noise in")
    return soft


def simulate(
    image_hu: np.ndarray,
    spacing_mm: float,
    recipe: NoiseRecipe,
    sigmas_hu: Sequence[float | None],
    seed: int,
    device: str = "cpu",
) -> tuple[np.ndarray, list[dict[str, float | str]]]:
    """Noise draws for one slice: (len(sigmas), y, x) float32 HU, and what each draw used.

    A ``None`` σ is drawn from the recipe's range. The slice is projected once.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
    air = np.where(np.isfinite(image_hu), np.maximum(image_hu, -1024.0), -1024.0)
    simulator = FanBeamSimulator(air, spacing_mm, recipe.geometry(rng), device)
    roi = soft_tissue_mask(air, simulator.fov_mask)
    kernels, doses, targets = [], [], []
    for wanted in sigmas_hu:  # the same random draws, in the same order, as one at a time
        kernels.append(recipe.kernel(rng))
        doses.append(recipe.dose(rng))
        targets.append(float(wanted) if wanted is not None else recipe.sigma(rng))
    out = simulator.extra_noise_many(
        doses, recipe.i0, kernels, generator, recipe.electronic_noise_var
    )
    used: list[dict[str, float | str]] = []
    for index, (kernel, dose, target) in enumerate(zip(kernels, doses, targets, strict=True)):
        out[index] *= np.float32(target / float(out[index][roi].std()))
        used.append({"sigma_hu": target, "dose_fraction": dose, "cutoff": kernel.cutoff,
                     "boost": kernel.boost, "window": kernel.window,
                     "source_to_iso_mm": simulator.geometry.source_to_iso_mm})  # fmt: skip
    return out, used


def noise_bank(
    images: Sequence[np.ndarray],
    spacings: Sequence[float],
    recipe: NoiseRecipe,
    draws: int,
    seed: int,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> list[np.ndarray]:
    """``draws`` noise fields per slice, each (draws, 1, y, x) float32 HU (a one-slice volume).

    Slice ``i`` uses seed ``(seed, i)`` and, with ``cache_dir``, is kept there under a
    digest of its pixels, spacing, recipe, draws and seed, so a resumed or repeated run
    reuses it and gets exactly the same noise.
    """
    bank = []
    for index, (image, spacing) in enumerate(zip(images, spacings, strict=True)):
        slice_seed = int.from_bytes(
            hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little"
        )
        digest = hashlib.sha256(
            json.dumps(
                [_BANK_FORMAT, asdict(recipe), spacing, draws, slice_seed],
                sort_keys=True,
                default=str,
            ).encode()
        )
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
        cached = cache_dir / f"fanbeam-{digest.hexdigest()[:24]}.npy" if cache_dir else None
        if cached is not None and cached.is_file():
            bank.append(np.load(cached).astype(np.float32)[:, None])
            continue
        noise, _ = simulate(image, spacing, recipe, [None] * draws, slice_seed, device)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial.npy")
            np.save(partial, noise.astype(np.float16))
            partial.replace(cached)
            noise = noise.astype(np.float16).astype(np.float32)  # the same as a cached load
        bank.append(noise[:, None])
        log(f"noise bank: slice {index + 1}/{len(images)} ({draws} draws)")
    return bank
