"""Tests of the ×2 super-resolution networks (shapes, bicubic at init, gradients, state)."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.networks.superres import (
    LightSR,
    PixelShuffleSR,
    bicubic_centre,
    clamp_to_local_range,
)

SMALL: dict[type[nn.Module], dict[str, Any]] = {
    LightSR: {"features": 8, "num_layers": 3},
    PixelShuffleSR: {"features": 8, "num_blocks": 2},
}
NETWORKS = list(SMALL)


def _build(cls: type[nn.Module], **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return cls(**SMALL[cls], **kwargs)


def _perturb_tail(net: nn.Module) -> None:
    """Give the zero-initialised tail weights, as training would."""
    generator = torch.Generator().manual_seed(1)
    tail = net.get_submodule("tail")
    with torch.no_grad():
        for parameter in tail.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("cls", NETWORKS)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (9, 13), (16, 11)])
def test_forward_doubles_size(
    cls: type[nn.Module], in_channels: int, size: tuple[int, int]
) -> None:
    net = _build(cls, in_channels=in_channels).eval()
    x = torch.rand(2, in_channels, *size)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, 1, 2 * size[0], 2 * size[1])
    assert y.dtype == torch.float32


@pytest.mark.parametrize("cls", NETWORKS)
def test_class_attributes(cls: type[nn.Module]) -> None:
    assert cls.task == "super_resolution"  # type: ignore[attr-defined]
    assert cls.scale == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [LightSR, PixelShuffleSR])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_untrained_equals_bicubic(cls: type[nn.Module], in_channels: int) -> None:
    """Default-sized untrained networks equal bicubic upsampling of the centre channel."""
    net = cls(in_channels=in_channels).eval()
    x = torch.rand(1, in_channels, 15, 12)
    centre = in_channels // 2
    expected = F.interpolate(
        x[:, centre : centre + 1], scale_factor=2, mode="bicubic", align_corners=False
    )
    with torch.inference_mode():
        assert torch.equal(net(x), expected)


@pytest.mark.parametrize("cls", NETWORKS)
def test_deterministic_in_eval(cls: type[nn.Module]) -> None:
    net = _build(cls, in_channels=3).eval()
    _perturb_tail(net)
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("cls", NETWORKS)
def test_local_residual(cls: type[nn.Module]) -> None:
    """Purely convolutional: a translated input gives the translated output, away from edges."""
    net = _build(cls).eval()
    _perturb_tail(net)
    x = torch.rand(1, 1, 32, 32)
    shifted = torch.roll(x, shifts=(3, 2), dims=(2, 3))
    with torch.inference_mode():
        y, y_shifted = net(x), net(shifted)
    interior = (slice(None), slice(None), slice(24, 40), slice(24, 40))
    rolled = torch.roll(y, shifts=(6, 4), dims=(2, 3))
    torch.testing.assert_close(y_shifted[interior], rolled[interior])


@pytest.mark.parametrize("cls", NETWORKS)
def test_gradients_reach_every_parameter(cls: type[nn.Module]) -> None:
    net = _build(cls, in_channels=3).train()
    x, target = torch.rand(2, 3, 8, 9), torch.rand(2, 1, 16, 18)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    # Step 1 moves the zero-initialised tail; from then on gradients reach every layer.
    for _ in range(2):
        optimiser.zero_grad()
        loss = F.l1_loss(net(x), target)
        loss.backward()
        optimiser.step()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", NETWORKS)
def test_state_dict_round_trip(cls: type[nn.Module]) -> None:
    kwargs = {**SMALL[cls], "in_channels": 3}
    net = cls(**kwargs).eval()
    _perturb_tail(net)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(**kwargs).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(1, 3, 10, 9)
    with torch.inference_mode():
        assert torch.equal(net(x), fresh(x))


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        LightSR(num_layers=0)


def test_clamp_keeps_every_pixel_inside_the_local_range_of_its_guide() -> None:
    generator = torch.Generator().manual_seed(0)
    guide = torch.randn(2, 1, 24, 24, generator=generator)
    estimate = guide + 3 * torch.randn(2, 1, 24, 24, generator=generator)
    clamped = clamp_to_local_range(estimate, guide, 3)
    padded = torch.nn.functional.pad(guide, (1, 1, 1, 1), mode="replicate")
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # (N, 1, 24, 24, 3, 3)
    low, high = windows.amin(dim=(-1, -2)), windows.amax(dim=(-1, -2))
    assert torch.all(clamped >= low) and torch.all(clamped <= high)
    inside = (estimate >= low) & (estimate <= high)
    assert inside.any() and torch.equal(clamped[inside], estimate[inside])  # untouched there
    assert not torch.equal(clamped, estimate)  # and the rest was clamped
    with pytest.raises(ValueError, match="odd"):
        clamp_to_local_range(estimate, guide, 4)


def test_a_clamped_network_draws_no_rim_beside_an_edge() -> None:
    torch.manual_seed(0)
    free = PixelShuffleSR(features=8, num_blocks=1)
    clamped = PixelShuffleSR(features=8, num_blocks=1, clamp_window=3)
    with torch.no_grad():
        for parameter in free.parameters():
            parameter.normal_(0.0, 0.5)  # a residual far from zero: rings everywhere
    clamped.load_state_dict(free.state_dict())
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1.0  # an edge: 0 on one side, 1 on the other
    with torch.no_grad():
        assert free(step).min() < -0.05 or free(step).max() > 1.05
        out = clamped(step)
    assert out.shape == (1, 1, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # only values the input has
    # Far from the edge the input's neighbourhood is flat, so the output is exactly it.
    assert torch.equal(out[..., :, :10], torch.zeros(1, 1, 32, 10))
    assert torch.equal(out[..., :, 22:], torch.ones(1, 1, 32, 10))
    # Untrained (zero tail) it is bicubic without bicubic's own overshoot at the edge.
    bicubic = bicubic_centre(step)
    assert bicubic.min() < 0.0 and bicubic.max() > 1.0
    untrained = PixelShuffleSR(features=8, num_blocks=1, clamp_window=3)(step)
    assert torch.equal(untrained, bicubic.clamp(0.0, 1.0))
    with pytest.raises(ValueError, match="clamp_window"):
        PixelShuffleSR(clamp_window=2)


def test_clamp_to_a_coarser_guide_uses_each_input_pixels_range_for_its_outputs() -> None:
    guide = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    estimate = torch.full((1, 1, 4, 4), 100.0)
    out = clamp_to_local_range(estimate, guide, 1)  # window 1: each input pixel's own value
    assert torch.equal(out, torch.nn.functional.interpolate(guide, scale_factor=2))
