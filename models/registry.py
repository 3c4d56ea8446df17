"""Named presets the node's configuration selects."""

from __future__ import annotations

from collections.abc import Callable

from models.base import Enhancer
from models.classical import AnisotropicDiffusionFilter, GaussianFilter, IdentityFilter

# The CNN presets of the model zoo replace "ct-denoise" and add the others; the
# classical filters stay available as baselines.
_PRESETS: dict[str, Callable[[], Enhancer]] = {
    "ct-denoise": AnisotropicDiffusionFilter,
    "mr-denoise": lambda: AnisotropicDiffusionFilter(conductance=1.5),
    "gaussian": GaussianFilter,
    "anisotropic-diffusion": AnisotropicDiffusionFilter,
    "identity": IdentityFilter,
}


class UnknownPresetError(KeyError):
    """The preset name is not known; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def preset_names() -> list[str]:
    """Every preset name, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str, device: str = "auto") -> Enhancer:
    """Instantiate the preset ``name`` for ``device`` (``auto``, ``cpu`` or ``cuda``).

    Raises
    ------
    UnknownPresetError
        When ``name`` is not a known preset.
    """
    factory = _PRESETS.get(name)
    if factory is None:
        raise UnknownPresetError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return factory()
