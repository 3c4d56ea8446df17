"""Numerical CT phantoms with an exact truth in HU, for evaluation on images never trained on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# CatPhan CTP515-like low-contrast module: every contrast at every diameter.
PHANTOM_CONTRASTS_HU: tuple[float, ...] = (3.0, 5.0, 7.0, 10.0, 14.0)
PHANTOM_DIAMETERS_MM: tuple[float, ...] = (4.0, 6.0, 9.0, 15.0)
# High-contrast inserts (name, HU), assigned to positions by the seed.
INSERT_MATERIALS_HU: tuple[tuple[str, float], ...] = (
    ("cortical_bone", 1000.0),
    ("trabecular_bone", 700.0),
    ("fat", -100.0),
    ("lung", -800.0),
)
AIR_HU = -1000.0
FAT_HU = -100.0

_CENTRE_ROI_RADIUS_MM = 8.0
_INSERT_RADIUS_MM = 10.0
_INSERT_ROI_RADIUS_MM = 6.0
_MARGIN_MM = 3.0
_TEXTURE_TAPER_MM = 10.0
_FAT_LAYER_MM = 5.0


@dataclass(frozen=True)
class Disk:
    """One low-contrast disk and the annulus of uniform background around it.

    Attributes
    ----------
    mask : np.ndarray
        Boolean mask of the pixels whose centres lie inside the disk.
    background_mask : np.ndarray
        Boolean annulus of uniform background around the disk, separated from it by a
        gap of at least 1.5 mm (and 1.5 pixels) so partial-volume edges are excluded.
    contrast_hu : float
        Disk value minus background value in the noise-free image, in HU.
    diameter_mm : float
        Nominal disk diameter in millimetres.
    """

    mask: np.ndarray
    background_mask: np.ndarray
    contrast_hu: float
    diameter_mm: float


@dataclass(frozen=True)
class Insert:
    """A high-contrast material insert.

    Attributes
    ----------
    name : str
        Material name (``cortical_bone``, ``trabecular_bone``, ``fat``, ``lung``).
    hu : float
        Value of the insert in the noise-free image, in HU.
    roi : np.ndarray
        Boolean mask well inside the insert (uniform, away from its edge).
    """

    name: str
    hu: float
    roi: np.ndarray


@dataclass(frozen=True)
class Phantom:
    """A noise-free 2-D phantom image with the regions used to evaluate it.

    Attributes
    ----------
    image : np.ndarray
        The exact truth, float32 HU, shape (size, size).
    uniform_rois : list of np.ndarray
        Boolean masks inside uniform soft-tissue background, away from every edge; the
        noise-free image is constant (``background_hu``) inside each.
    disks : list of Disk
        The low-contrast disks, one per (contrast, diameter) pair.
    pixel_spacing_mm : float
        Square pixel spacing in millimetres.
    body_mask : np.ndarray
        Boolean mask of the body (everything that is not air).
    inserts : list of Insert
        The high-contrast inserts with uniform interior ROIs.
    background_hu : float
        Value of the uniform soft-tissue background of the low-contrast module.
    name : str
        Identifier used in reports (size, spacing and seed).
    """

    image: np.ndarray
    uniform_rois: list[np.ndarray]
    disks: list[Disk]
    pixel_spacing_mm: float
    body_mask: np.ndarray
    inserts: list[Insert]
    background_hu: float
    name: str


def _annulus_radii_mm(radius_mm: float, spacing_mm: float) -> tuple[float, float]:
    """Inner and outer radius of the background annulus around a disk of ``radius_mm``."""
    inner = radius_mm + max(1.5, 1.5 * spacing_mm)
    return inner, inner + max(0.6 * radius_mm, 2.0, 2.0 * spacing_mm)


def gaussian_random_field(
    size: int, pixel_spacing_mm: float, correlation_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth, zero-mean, unit-variance Gaussian random field (periodic, float64).

    Parameters
    ----------
    size : int
        Side of the square field in pixels.
    pixel_spacing_mm : float
        Pixel spacing in millimetres.
    correlation_mm : float
        Standard deviation of the Gaussian smoothing kernel, in millimetres.
    rng : np.random.Generator
        Source of the white noise (the field is deterministic given its state).

    Returns
    -------
    np.ndarray
        Field of shape (size, size) with mean 0 and standard deviation 1.
    """
    freq = np.fft.fftfreq(size, d=pixel_spacing_mm)  # cycles/mm
    f2 = freq[:, None] ** 2 + freq[None, :] ** 2
    transfer = np.exp(-2.0 * math.pi**2 * correlation_mm**2 * f2)
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * transfer))
    field -= field.mean()
    return np.asarray(field / (field.std() + 1e-12), dtype=np.float64)


def low_contrast_phantom(
    size: int = 512,
    pixel_spacing_mm: float = 0.7,
    seed: int = 0,
    *,
    background_hu: float = 40.0,
    texture_hu: float = 8.0,
    name: str | None = None,
) -> Phantom:
    """Build a CatPhan CTP515-like low-contrast phantom inside an anatomical-like body.

    A soft-tissue body ellipse (semi-axes 0.45 and 0.37 of the field of view) with a
    5 mm subcutaneous fat layer sits in air (-1000 HU). At its centre, a low-contrast
    module of uniform ``background_hu`` holds five spokes, one per contrast
    (3, 5, 7, 10, 14 HU), each with disks of 4, 6, 9 and 15 mm. Four high-contrast
    inserts (cortical bone 1000, trabecular bone 700, fat -100, lung -800 HU) lie
    between the module and the body edge. Outside the module and the inserts, a smooth
    two-scale Gaussian random field of standard deviation ``texture_hu`` makes the
    soft tissue non-piecewise-constant; it tapers to exactly zero over 10 mm towards
    the module and the inserts, so disk contrasts and uniform ROIs stay exact.

    Parameters
    ----------
    size : int
        Image side in pixels.
    pixel_spacing_mm : float
        Square pixel spacing in millimetres. The field of view ``size * spacing`` must
        be large enough for the module (about 330 mm or more); smaller raises.
    seed : int
        Seeds the module rotation, the insert layout and the texture field.
    background_hu : float
        Soft-tissue value of the module background (water-equivalent, 0-40 HU).
    texture_hu : float
        Standard deviation of the texture outside the module; 0 disables it.
    name : str or None
        Report identifier; defaults to ``lc-{size}-{spacing}mm-s{seed}``.

    Returns
    -------
    Phantom
        The float32 image and its evaluation regions.

    Raises
    ------
    ValueError
        If ``size`` or ``pixel_spacing_mm`` is not positive, or the field of view is too
        small to hold the module and the inserts inside the body.
    """
    if size <= 0 or pixel_spacing_mm <= 0:
        raise ValueError(
            f"size and pixel_spacing_mm must be positive, got {size} and {pixel_spacing_mm}"
        )
    rng = np.random.default_rng(seed)
    fov_mm = size * pixel_spacing_mm
    semi_x, semi_y = 0.45 * fov_mm, 0.37 * fov_mm

    coords = (np.arange(size) - (size - 1) / 2.0) * pixel_spacing_mm
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    def circle(cx: float, cy: float, radius: float) -> np.ndarray:
        return np.asarray((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2)

    def ring(cx: float, cy: float, inner: float, outer: float) -> np.ndarray:
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        return np.asarray((r2 > inner**2) & (r2 <= outer**2))

    # Spoke layout: disks from small (inside) to large (outside), annuli not touching.
    radial_centres: list[tuple[float, float, float]] = []  # (diameter, centre radius, outer)
    edge = _CENTRE_ROI_RADIUS_MM + _MARGIN_MM
    for diameter in PHANTOM_DIAMETERS_MM:
        outer = _annulus_radii_mm(diameter / 2.0, pixel_spacing_mm)[1]
        radial_centres.append((diameter, edge + outer, outer))
        edge += 2.0 * outer + 1.0
    module_radius = edge + _MARGIN_MM
    insert_room = semi_y - module_radius
    if insert_room < 2.0 * (_INSERT_RADIUS_MM + _MARGIN_MM) + _FAT_LAYER_MM:
        raise ValueError(
            f"field of view {fov_mm:.0f} mm (size {size} x pixel_spacing_mm "
            f"{pixel_spacing_mm}) is too small for the {module_radius:.0f} mm module; "
            "use a larger size or spacing"
        )

    image = np.full((size, size), AIR_HU, dtype=np.float64)
    body = (xx / semi_x) ** 2 + (yy / semi_y) ** 2 <= 1.0
    inner_x, inner_y = semi_x - _FAT_LAYER_MM, semi_y - _FAT_LAYER_MM
    soft_tissue = (xx / inner_x) ** 2 + (yy / inner_y) ** 2 <= 1.0
    image[body] = FAT_HU
    image[soft_tissue] = background_hu

    # Low-contrast module.
    rotation = rng.uniform(0.0, 2.0 * math.pi / len(PHANTOM_CONTRASTS_HU))
    n_spokes = len(PHANTOM_CONTRASTS_HU)
    disk_geometry: list[tuple[float, float, float, float]] = []  # cx, cy, outer, contrast
    disks: list[Disk] = []
    for k, contrast in enumerate(PHANTOM_CONTRASTS_HU):
        angle = rotation + 2.0 * math.pi * k / n_spokes
        for diameter, centre_radius, outer in radial_centres:
            cx, cy = centre_radius * math.cos(angle), centre_radius * math.sin(angle)
            radius = diameter / 2.0
            inner = _annulus_radii_mm(radius, pixel_spacing_mm)[0]
            mask = circle(cx, cy, radius)
            image[mask] = background_hu + contrast
            disks.append(Disk(mask, ring(cx, cy, inner, outer), contrast, diameter))
            disk_geometry.append((cx, cy, outer, contrast))

    # Uniform ROIs: the module centre and the gaps between spokes.
    uniform_rois = [circle(0.0, 0.0, _CENTRE_ROI_RADIUS_MM)]
    for k in range(n_spokes):
        angle = rotation + 2.0 * math.pi * (k + 0.5) / n_spokes
        for rho in (0.45 * module_radius, 0.75 * module_radius):
            px, py = rho * math.cos(angle), rho * math.sin(angle)
            clearance = min(math.hypot(px - cx, py - cy) - out for cx, cy, out, _ in disk_geometry)
            radius = min(_CENTRE_ROI_RADIUS_MM, clearance - 2.0, module_radius - rho - 2.0)
            if radius >= 3.0:
                uniform_rois.append(circle(px, py, radius))

    # High-contrast inserts between the module and the body edge.
    materials = [INSERT_MATERIALS_HU[i] for i in rng.permutation(len(INSERT_MATERIALS_HU))]
    protected_circles = [(0.0, 0.0, module_radius)]
    inserts: list[Insert] = []
    for k, (material, hu) in enumerate(materials):
        angle = math.pi / 4.0 + math.pi / 2.0 * k + rng.uniform(-0.2, 0.2)
        body_edge = 1.0 / math.sqrt(
            (math.cos(angle) / inner_x) ** 2 + (math.sin(angle) / inner_y) ** 2
        )
        rho = (module_radius + body_edge) / 2.0
        cx, cy = rho * math.cos(angle), rho * math.sin(angle)
        image[circle(cx, cy, _INSERT_RADIUS_MM)] = hu
        protected_circles.append((cx, cy, _INSERT_RADIUS_MM + _MARGIN_MM))
        inserts.append(Insert(material, hu, circle(cx, cy, _INSERT_ROI_RADIUS_MM)))

    if texture_hu != 0.0:
        field = gaussian_random_field(size, pixel_spacing_mm, 12.0, rng)
        field += 0.4 * gaussian_random_field(size, pixel_spacing_mm, 4.0, rng)
        field *= texture_hu / field.std()
        # Exact distance (mm) to the union of the protected circles: 0 inside them.
        distance = np.min(
            [np.hypot(xx - cx, yy - cy) - radius for cx, cy, radius in protected_circles], axis=0
        )
        weight = np.clip(distance / _TEXTURE_TAPER_MM, 0.0, 1.0) * body
        image += np.where(weight > 0.0, field * weight, 0.0)

    result = image.astype(np.float32)
    _check_regions(result, uniform_rois, disks, background_hu)
    label = name or f"lc-{size}-{pixel_spacing_mm:g}mm-s{seed}"
    return Phantom(
        image=result,
        uniform_rois=uniform_rois,
        disks=disks,
        pixel_spacing_mm=float(pixel_spacing_mm),
        body_mask=body,
        inserts=inserts,
        background_hu=float(background_hu),
        name=label,
    )


def _check_regions(
    image: np.ndarray, rois: list[np.ndarray], disks: list[Disk], background_hu: float
) -> None:
    """Guard the layout: every region is non-empty and exact on the noise-free image."""
    bg = np.float32(background_hu)
    for roi in rois:
        if not roi.any() or np.any(image[roi] != bg):
            raise RuntimeError("uniform ROI empty or not uniform: layout bug")
    for disk in disks:
        if not disk.mask.any() or not disk.background_mask.any():
            raise RuntimeError(f"{disk.diameter_mm} mm disk has an empty mask: layout bug")
        if np.any(image[disk.background_mask] != bg) or np.any(
            image[disk.mask] != np.float32(background_hu + disk.contrast_hu)
        ):
            raise RuntimeError(f"{disk.diameter_mm} mm disk not exact: layout bug")


# The held-out evaluation set: sizes, spacings, backgrounds and layouts that differ.
HELD_OUT_SPECS: tuple[tuple[int, float, int, float], ...] = (
    (512, 0.7, 101, 40.0),
    (512, 0.8, 202, 0.0),
    (384, 0.9, 303, 20.0),
    (256, 1.4, 404, 30.0),
)


def held_out_phantoms() -> list[Phantom]:
    """The fixed held-out set: four phantoms differing in size, spacing, seed and background.

    Returns
    -------
    list of Phantom
        Built from ``HELD_OUT_SPECS`` (size, pixel spacing mm, seed, background HU).
    """
    return [
        low_contrast_phantom(size, spacing, seed, background_hu=background)
        for size, spacing, seed, background in HELD_OUT_SPECS
    ]


# The validation set, for choosing a training recipe: seeds disjoint from training (5000+)
# and from the held-out test set above, so recipes are never tuned on the test images.
VALIDATION_SPECS: tuple[tuple[int, float, int, float], ...] = (
    (512, 0.75, 7001, 10.0),
    (384, 0.95, 7002, 30.0),
    (256, 1.35, 7003, 0.0),
)


def validation_phantoms() -> list[Phantom]:
    """The fixed validation set, disjoint from the training and the held-out test phantoms.

    Returns
    -------
    list of Phantom
        Built from ``VALIDATION_SPECS`` (size, pixel spacing mm, seed, background HU).
    """
    return [
        low_contrast_phantom(size, spacing, seed, background_hu=background)
        for size, spacing, seed, background in VALIDATION_SPECS
    ]
