"""Tests of the few-step cold-diffusion model (identity at init, seeds, loss, state)."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from models.networks.diffusion import ColdDiffusion

SMALL: dict[str, Any] = {"features": 8, "depth": 2, "time_dim": 16, "steps": 4}


def _build(**kwargs: Any) -> ColdDiffusion:
    torch.manual_seed(0)
    return ColdDiffusion(**{**SMALL, **kwargs})


def _perturb_head(model: ColdDiffusion) -> None:
    """Give the zero-initialised output head weights, as training would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.restorer.head.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_class_attributes() -> None:
    assert ColdDiffusion.task == "diffusion"
    assert ColdDiffusion.scale == 1


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (9, 13), (17, 10)])
def test_forward_shape(in_channels: int, size: tuple[int, int]) -> None:
    model = _build(in_channels=in_channels).eval()
    _perturb_head(model)
    x = torch.rand(2, in_channels, *size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 1, *size)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("noise_scale", [0.0, 0.05])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_untrained_returns_the_low_dose_input(noise_scale: float, in_channels: int) -> None:
    """Default-sized and 10 steps: the untrained sampler is the identity."""
    model = ColdDiffusion(in_channels=in_channels, noise_scale=noise_scale).eval()
    x = torch.rand(1, in_channels, 13, 16)
    centre = in_channels // 2
    with torch.inference_mode():
        y = model(x)
    torch.testing.assert_close(y, x[:, centre : centre + 1], rtol=0, atol=1e-6)


def test_untrained_restore_returns_the_low_dose_centre() -> None:
    model = _build(in_channels=3)
    x_low, x_t = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    assert torch.equal(model.restore(x_t, x_low, torch.tensor([1, 3])), x_low[:, 1:2])


def test_deterministic_in_eval() -> None:
    model = _build(in_channels=3, noise_scale=0.05).eval()
    _perturb_head(model)
    x = torch.rand(1, 3, 12, 12)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


def test_seeds_differ_with_noise_and_repeat_with_the_same_seed() -> None:
    model = _build(noise_scale=0.05).eval()
    _perturb_head(model)
    x = torch.rand(1, 1, 12, 12)
    state = torch.get_rng_state()
    with torch.inference_mode():
        first, again = model.sample(x, seed=1), model.sample(x, seed=1)
        other = model.sample(x, seed=2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert torch.equal(torch.get_rng_state(), state), "sampling must not use the global RNG"


def test_without_noise_seeds_do_not_matter() -> None:
    model = _build(noise_scale=0.0).eval()
    _perturb_head(model)
    x = torch.rand(1, 1, 12, 12)
    with torch.inference_mode():
        assert torch.equal(model.sample(x, seed=1), model.sample(x, seed=2))


def test_sample_accepts_fewer_steps() -> None:
    model = _build().eval()
    _perturb_head(model)
    x = torch.rand(1, 1, 8, 8)
    with torch.inference_mode():
        assert model.sample(x, steps=2).shape == (1, 1, 8, 8)


def test_one_step_returns_the_restored_estimate() -> None:
    """With one step, Algorithm 2 returns x0_hat = R(x_low, x_low, T)."""
    model = _build(noise_scale=0.05).eval()
    _perturb_head(model)
    x = torch.rand(1, 1, 8, 8)
    with torch.inference_mode():
        expected = model.restore(x, x, model.steps)
        torch.testing.assert_close(model.sample(x, steps=1), expected)


def test_training_loss_is_reproducible_and_trains_every_parameter() -> None:
    model = _build(in_channels=3, noise_scale=0.05).train()
    x0, x_low = torch.rand(2, 1, 9, 8), torch.rand(2, 3, 9, 8)
    loss_a = model.training_loss(x0, x_low, generator=torch.Generator().manual_seed(3))
    loss_b = model.training_loss(x0, x_low, generator=torch.Generator().manual_seed(3))
    assert loss_a.ndim == 0
    assert torch.equal(loss_a, loss_b)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    # Step 1 moves the zero-initialised head; from then on gradients reach every layer.
    for _ in range(2):
        optimiser.zero_grad()
        model.training_loss(x0, x_low).backward()
        optimiser.step()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_state_dict_round_trip() -> None:
    kwargs = {**SMALL, "in_channels": 3, "noise_scale": 0.05, "seed": 7}
    model = ColdDiffusion(**kwargs).eval()
    _perturb_head(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = ColdDiffusion(**kwargs).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(1, 3, 10, 11)
    with torch.inference_mode():
        assert torch.equal(model(x), fresh(x))


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="steps"):
        ColdDiffusion(steps=0)
    with pytest.raises(ValueError, match="noise_scale"):
        ColdDiffusion(noise_scale=-1.0)
