"""The fan-beam simulator: exact reconstruction, noise that follows dose, bowtie and kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.fanbeam import FanBeamGeometry, FanBeamSimulator, Kernel
from models.simulation import MU_WATER_PER_MM, noise_power_spectrum, nps_mean_frequency

SIZE, SPACING = 128, 2.5  # a 320 mm field, small enough for a fast test
GEOMETRY = FanBeamGeometry(541.0, 949.0, n_views=360)


def _cylinder() -> np.ndarray:
    offsets = np.arange(SIZE) - (SIZE - 1) / 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    image = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)
    image[xx**2 + yy**2 < (130 / SPACING) ** 2] = 0.0  # water, 260 mm across
    image[(xx - 15) ** 2 + (yy + 10) ** 2 < (25 / SPACING) ** 2] = 300.0
    return image


@pytest.fixture(scope="module")
def simulator() -> FanBeamSimulator:
    return FanBeamSimulator(_cylinder(), SPACING, GEOMETRY)


def _disk(radius_mm: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    offsets = np.arange(SIZE) - (SIZE - 1) / 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    return (xx - cx) ** 2 + (yy - cy) ** 2 < (radius_mm / SPACING) ** 2


def test_fbp_of_the_projection_gives_back_the_hu(simulator: FanBeamSimulator) -> None:
    hu = simulator.reconstruct(simulator.sinogram, Kernel(cutoff=1.0)).numpy()
    hu = hu * (1000.0 / MU_WATER_PER_MM) - 1000.0
    water = _disk(90) & ~_disk(45, 15, -10)
    assert abs(float(hu[water].mean())) < 2.0
    assert abs(float(hu[_disk(15, 15, -10)].mean()) - 300.0) < 3.0
    air = ~_disk(150) & simulator.fov_mask
    assert abs(float(hu[air].mean()) + 1000.0) < 3.0


def test_noise_follows_the_dose_exactly(simulator: FanBeamSimulator) -> None:
    """Quantum noise only: the added variance is (1/a - 1) times a fixed map, so the same
    draw at a quarter and at a half dose differs by sqrt(3) everywhere."""
    kernel = Kernel(0.8)
    half = simulator.extra_noise(0.5, 1e5, kernel, torch.Generator().manual_seed(3), 0.0)
    quarter = simulator.extra_noise(0.25, 1e5, kernel, torch.Generator().manual_seed(3), 0.0)
    inside = _disk(100)
    np.testing.assert_allclose(quarter[inside], np.sqrt(3.0) * half[inside], rtol=1e-3, atol=1e-3)
    assert abs(float(half[inside].mean())) < 0.1 * float(half[inside].std())
    full = simulator.extra_noise(1.0, 1e5, kernel, torch.Generator().manual_seed(3))
    assert not full.any()


def test_electronic_noise_adds_variance_where_counts_are_low(simulator: FanBeamSimulator) -> None:
    kernel = Kernel(0.8)
    quantum = simulator.extra_noise(0.05, 2e4, kernel, torch.Generator().manual_seed(1), 0.0)
    both = simulator.extra_noise(0.05, 2e4, kernel, torch.Generator().manual_seed(1), 500.0)
    inside = _disk(80)
    assert float(both[inside].std()) > 1.05 * float(quantum[inside].std())


def test_the_bowtie_makes_the_periphery_noisier(simulator: FanBeamSimulator) -> None:
    flat = FanBeamSimulator(_cylinder(), SPACING, FanBeamGeometry(541.0, 949.0, 360, 180.0, 0.0))
    kernel, edge, centre = Kernel(0.8), _disk(125) & ~_disk(100), _disk(30)
    with_bowtie = simulator.extra_noise(0.25, 1e5, kernel, torch.Generator().manual_seed(2), 0.0)
    without = flat.extra_noise(0.25, 1e5, kernel, torch.Generator().manual_seed(2), 0.0)
    ratio_bowtie = with_bowtie[edge].std() / with_bowtie[centre].std()
    ratio_flat = without[edge].std() / without[centre].std()
    assert ratio_bowtie > 1.15 * ratio_flat  # measured 1.25 here


def test_a_sharper_kernel_makes_finer_noise(simulator: FanBeamSimulator) -> None:
    def mean_frequency(kernel: Kernel) -> float:
        noise = simulator.extra_noise(0.25, 1e5, kernel, torch.Generator().manual_seed(4), 0.0)
        freq, nps = noise_power_spectrum(noise, 32, SPACING, mask=_disk(100))
        return nps_mean_frequency(freq, nps)

    smooth, sharp = mean_frequency(Kernel(0.45)), mean_frequency(Kernel(1.0, boost=1.0))
    assert sharp > 1.3 * smooth
    # A Gaussian window has no hard cut-off: at the same cutoff it keeps more noise near
    # Nyquist than the cosine window.
    assert mean_frequency(Kernel(1.0, boost=1.0, window="gaussian")) > 1.05 * sharp


@pytest.mark.parametrize(
    "make",
    [
        lambda: FanBeamGeometry(500.0, 400.0),
        lambda: FanBeamGeometry(n_views=4),
        lambda: Kernel(cutoff=0.0),
        lambda: Kernel(window="hann"),
        lambda: FanBeamSimulator(np.zeros((16, 32)), 1.0),
        lambda: FanBeamSimulator(np.zeros((512, 512)), 2.0),  # a 1 m field does not fit
    ],
)
def test_invalid_arguments_are_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make()


def test_invalid_dose_is_refused(simulator: FanBeamSimulator) -> None:
    with pytest.raises(ValueError, match="dose_fraction"):
        simulator.noise_sinogram(0.0, 1e5, 10.0, torch.Generator())


def test_batched_noise_equals_one_draw_at_a_time(simulator: FanBeamSimulator) -> None:
    kernels = [Kernel(0.5), Kernel(1.0, boost=1.0, window="gaussian")]
    generator = torch.Generator().manual_seed(7)
    both = simulator.extra_noise_many([0.2, 0.4], 1e5, kernels, generator, 10.0)
    generator = torch.Generator().manual_seed(7)
    first = simulator.extra_noise(0.2, 1e5, kernels[0], generator, 10.0)
    second = simulator.extra_noise(0.4, 1e5, kernels[1], generator, 10.0)
    np.testing.assert_allclose(both, np.stack([first, second]), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="one kernel per sinogram"):
        simulator.extra_noise_many([0.2], 1e5, kernels, generator, 10.0)
