"""The network architectures of the model zoo, found by name (the name stored in model cards)."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# name -> "module:Class"; imported lazily so listing models does not import every network.
ARCHITECTURES: dict[str, str] = {
    # denoisers
    "dncnn": "models.networks.denoisers:DnCNN",
    "redcnn": "models.networks.denoisers:REDCNN",
    "resunet": "models.networks.denoisers:ResUNet",
    # autoencoder family
    "cae": "models.networks.autoencoders:CAE",
    "unet_ae": "models.networks.autoencoders:UNetAE",
    "vae": "models.networks.autoencoders:VAE",
    "resnet_ae": "models.networks.autoencoders:ResNetAE",
    # super-resolution
    "sr_light": "models.networks.superres:LightSR",
    "sr_pixelshuffle": "models.networks.superres:PixelShuffleSR",
    # few-step conditional diffusion
    "cold_diffusion": "models.networks.diffusion:ColdDiffusion",
}


def network_class(architecture: str) -> type[nn.Module]:
    """The class registered under ``architecture``.

    Raises
    ------
    KeyError
        Naming the unknown architecture and the known ones.
    """
    try:
        target = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"unknown architecture {architecture!r}; known: {known}") from None
    module_name, class_name = target.split(":")
    cls: type[nn.Module] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_network(architecture: str, **kwargs: Any) -> nn.Module:
    """Instantiate ``architecture`` with the keyword arguments stored in its model card."""
    return network_class(architecture)(**kwargs)
