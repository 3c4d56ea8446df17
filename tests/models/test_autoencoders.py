"""The autoencoders: shapes, determinism, gradients, state round trip, the VAE's KL term."""

from __future__ import annotations

import inspect
import io
import json
from typing import Any

import pytest
import torch
from torch import nn

from models.networks import build_network, network_class
from models.networks.autoencoders import VAE

# Small configurations so the whole file runs in a few seconds on two CPU cores.
SMALL: dict[str, dict[str, Any]] = {
    "cae": {"features": 4, "depth": 2},
    "unet_ae": {"features": 4, "depth": 2},
    "vae": {"features": 4, "depth": 2, "latent_channels": 4},
    "resnet_ae": {"features": 4, "depth": 2},
}
SIZES = [(16, 16), (37, 53), (24, 40)]


def _build(name: str, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return build_network(name, in_channels=in_channels, **SMALL[name])


@pytest.mark.parametrize("name", SMALL)
def test_class_attributes_and_json_defaults(name: str) -> None:
    cls = network_class(name)
    assert cls.task == "denoise"
    assert cls.scale == 1
    defaults = {
        p.name: p.default for p in inspect.signature(cls).parameters.values() if p.name != "self"
    }
    assert defaults["in_channels"] == 1
    assert json.loads(json.dumps(defaults)) == defaults


@pytest.mark.parametrize("name", SMALL)
def test_default_configuration_runs(name: str) -> None:
    net = build_network(name).eval()
    with torch.inference_mode():
        y = net(torch.rand(1, 1, 16, 16))
    assert y.shape == (1, 1, 16, 16)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_forward_shape_and_dtype(name: str, in_channels: int, height: int, width: int) -> None:
    net = _build(name, in_channels).eval()
    with torch.inference_mode():
        y = net(torch.rand(2, in_channels, height, width))
    assert y.shape == (2, 1, height, width)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("name", SMALL)
def test_eval_mode_is_deterministic(name: str) -> None:
    net = _build(name, 3).eval()
    x = torch.rand(2, 3, 37, 53)
    with torch.inference_mode():
        assert torch.equal(net(x), net(x.clone()))


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_every_parameter(name: str) -> None:
    net = _build(name, 3).train()
    x = torch.rand(2, 3, 24, 24)
    loss = (net(x) - x[:, 1:2]).pow(2).mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_round_trip(name: str) -> None:
    net = _build(name, 3).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # a fresh instance with different random weights
    fresh = build_network(name, in_channels=3, **SMALL[name])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.inference_mode():
        assert torch.equal(net(x), fresh(x))


def test_vae_samples_in_train_mode_and_uses_the_mean_in_eval_mode() -> None:
    net = _build("vae", 3)
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        net.train()
        recon, mu, logvar = net.forward_with_latent(x)
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net.forward_with_latent(x)[0])
    assert recon.shape == (2, 1, 37, 53)
    # The latent is 2**depth = 4 times smaller, rounded up (the input is padded).
    assert mu.shape == logvar.shape == (2, 4, 10, 14)


def test_vae_training_step_with_kl_term() -> None:
    net = _build("vae", 1).train()
    x = torch.rand(2, 1, 16, 16)
    recon, mu, logvar = net.forward_with_latent(x)
    loss = (recon - x).pow(2).mean() + 1e-3 * VAE.kl_divergence(mu, logvar)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_kl_divergence_is_zero_for_the_prior() -> None:
    zeros = torch.zeros(3, 4, 5, 5)
    assert torch.equal(VAE.kl_divergence(zeros, zeros), torch.tensor(0.0))


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 1.0, 5.0])
def test_kl_divergence_is_non_negative(scale: float) -> None:
    torch.manual_seed(0)
    mu = scale * torch.randn(4, 4, 3, 3)
    logvar = scale * torch.randn(4, 4, 3, 3)
    assert VAE.kl_divergence(mu, logvar) >= 0
    assert VAE.kl_divergence(torch.zeros_like(mu), logvar) >= 0


def test_kl_divergence_is_a_batch_mean_of_per_sample_sums() -> None:
    mu = torch.full((1, 2, 2, 2), 2.0)
    logvar = torch.zeros(1, 2, 2, 2)
    # 0.5 * mu² = 2 per element, 8 elements.
    assert torch.isclose(VAE.kl_divergence(mu, logvar), torch.tensor(16.0))
    assert torch.isclose(
        VAE.kl_divergence(mu.repeat(5, 1, 1, 1), logvar.repeat(5, 1, 1, 1)), torch.tensor(16.0)
    )
