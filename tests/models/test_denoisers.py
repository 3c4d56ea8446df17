"""The residual denoisers: shapes, identity at init, determinism, gradients, state round trip."""

from __future__ import annotations

import inspect
import io
import json
from typing import Any

import pytest
import torch
from torch import nn

from models.networks import build_network, network_class

# Small configurations so the whole file runs in a few seconds on two CPU cores.
SMALL: dict[str, dict[str, Any]] = {
    "dncnn": {"features": 8, "depth": 4},
    "redcnn": {"features": 8},
    "resunet": {"features": 4, "depth": 2},
}
SIZES = [(16, 16), (37, 53), (24, 40)]


def _build(name: str, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return build_network(name, in_channels=in_channels, **SMALL[name])


def _perturb(net: nn.Module) -> None:
    """Move every parameter off its initial value, so outputs are no longer the identity."""
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


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
    x = torch.rand(1, 1, 16, 16)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (1, 1, 16, 16)
    assert torch.equal(y, x)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_forward_shape_and_dtype(name: str, in_channels: int, height: int, width: int) -> None:
    net = _build(name, in_channels)
    _perturb(net)
    net.eval()
    with torch.inference_mode():
        y = net(torch.rand(2, in_channels, height, width))
    assert y.shape == (2, 1, height, width)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("in_channels", [1, 3, 5])
@pytest.mark.parametrize("train", [False, True])
def test_identity_at_init(name: str, in_channels: int, train: bool) -> None:
    net = _build(name, in_channels).train(train)
    # Values outside [0, 1] too: the engine's window may map tissue below 0 or above 1.
    x = torch.randn(2, in_channels, 37, 53)
    with torch.no_grad():
        y = net(x)
    assert torch.equal(y, x[:, in_channels // 2 : in_channels // 2 + 1])


@pytest.mark.parametrize("name", SMALL)
def test_eval_mode_is_deterministic(name: str) -> None:
    net = _build(name, 3)
    _perturb(net)
    net.eval()
    x = torch.rand(2, 3, 37, 53)
    with torch.inference_mode():
        first, second = net(x), net(x.clone())
    assert not torch.equal(first, x[:, 1:2])
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_every_parameter(name: str) -> None:
    net = _build(name, 3).train()
    x = torch.rand(2, 3, 24, 24)
    loss = (net(x) - torch.rand(2, 1, 24, 24)).pow(2).mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    # From the identity start, the zero-initialised last layer is what learns first.
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_round_trip(name: str) -> None:
    net = _build(name, 3)
    _perturb(net)
    with torch.no_grad():
        net.train()(torch.rand(2, 3, 24, 24))  # update BatchNorm running statistics
    net.eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_network(name, in_channels=3, **SMALL[name])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.inference_mode():
        assert torch.equal(net(x), fresh(x))


@pytest.mark.parametrize("name", ["dncnn", "resunet"])
def test_invalid_depth_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="depth"):
        build_network(name, depth=0)
