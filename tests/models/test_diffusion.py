"""Tests of the few-step cold-diffusion model (identity at init, seeds, loss, state)."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from models.networks.denoisers import DnCNN, ResUNet
from models.networks.diffusion import ColdDiffusion, RestoreDnCNN, RestoreResUNet

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


def _trained_dncnn(in_channels: int = 3, features: int = 8, depth: int = 4) -> DnCNN:
    """A DnCNN with non-trivial weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(2)
    network = DnCNN(in_channels, features, depth)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape))
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return network.eval()


def test_untrained_dncnn_restorer_returns_the_low_dose_input() -> None:
    model = ColdDiffusion(in_channels=3, noise_scale=0.05, features=8, depth=4, restorer="dncnn")
    x = torch.rand(1, 3, 11, 14)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), x[:, 1:2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise_scale", [0.0, 0.05])
def test_initialised_from_a_dncnn_the_sampler_returns_that_dncnn(noise_scale: float) -> None:
    """Every restoration is the DnCNN's estimate, so the sampler's noise telescopes away."""
    source = _trained_dncnn()
    model = ColdDiffusion(
        in_channels=3, noise_scale=noise_scale, steps=6, features=8, depth=4, restorer="dncnn"
    )
    model.initialise_from(source)
    model.eval()
    x = torch.rand(2, 3, 12, 15)
    with torch.inference_mode():
        expected = source(x)
        assert not torch.allclose(expected, x[:, 1:2], atol=1e-3), "the source must do something"
        x_t = torch.rand(2, 1, 12, 15)
        torch.testing.assert_close(model.restore(x_t, x, 2), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


def test_dncnn_restorer_learns_to_use_x_t_and_t() -> None:
    # After initialisation the x_t channel and the time shifts are zero; the diffusion
    # loss must still reach them, or training could never leave the DnCNN.
    model = ColdDiffusion(in_channels=3, noise_scale=0.05, steps=4, features=8, depth=4,
                          time_dim=16, restorer="dncnn")  # fmt: skip
    model.initialise_from(_trained_dncnn())
    model.train()
    x0, x_low = torch.rand(4, 1, 10, 10), torch.rand(4, 3, 10, 10)
    model.training_loss(x0, x_low, generator=torch.Generator().manual_seed(0)).backward()
    restorer = model.restorer
    assert isinstance(restorer, RestoreDnCNN)
    assert restorer.first.weight.grad is not None
    assert restorer.first.weight.grad[:, 0].abs().sum() > 0
    for shift in restorer.shifts.parameters():
        assert shift.grad is not None and shift.grad.abs().sum() > 0


def test_initialisation_is_refused_when_it_cannot_fit() -> None:
    unet = ColdDiffusion(in_channels=3, features=8, depth=2)
    with pytest.raises(ValueError, match="restorer 'dncnn'"):
        unet.initialise_from(_trained_dncnn())
    dncnn = ColdDiffusion(in_channels=3, features=8, depth=5, restorer="dncnn")
    with pytest.raises(ValueError, match="5-layer, 8-feature restorer"):
        dncnn.initialise_from(_trained_dncnn(depth=4))
    with pytest.raises(ValueError, match="3 channels"):
        ColdDiffusion(in_channels=3, features=8, depth=4, restorer="dncnn").initialise_from(
            _trained_dncnn(in_channels=1)
        )
    with pytest.raises(ValueError, match="restorer must be one of unet, dncnn"):
        ColdDiffusion(restorer="transformer")


def _trained_resunet(in_channels: int = 1, features: int = 8, depth: int = 2) -> ResUNet:
    torch.manual_seed(3)
    network = ResUNet(in_channels=in_channels, features=features, depth=depth)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return network.eval()


@pytest.mark.parametrize("in_channels", [1, 3])
def test_initialised_from_a_resunet_the_sampler_returns_that_resunet(in_channels: int) -> None:
    source = _trained_resunet(in_channels)
    model = ColdDiffusion(in_channels=in_channels, noise_scale=0.05, steps=5, features=8,
                          depth=2, restorer="resunet")  # fmt: skip
    model.initialise_from(source)
    model.eval()
    x = torch.rand(2, in_channels, 20, 23)
    with torch.inference_mode():
        expected = source(x)
        centre = x[:, in_channels // 2 : in_channels // 2 + 1]
        assert not torch.allclose(expected, centre, atol=1e-3), "the source must do something"
        x_t = torch.rand(2, 1, 20, 23)
        torch.testing.assert_close(model.restore(x_t, x, 3), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


def test_resunet_restorer_learns_to_use_x_t_and_t() -> None:
    model = ColdDiffusion(in_channels=1, noise_scale=0.05, steps=4, features=8, depth=2,
                          time_dim=16, restorer="resunet")  # fmt: skip
    model.initialise_from(_trained_resunet())
    model.train()
    x0, x_low = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    model.training_loss(x0, x_low, generator=torch.Generator().manual_seed(0)).backward()
    restorer = model.restorer
    assert isinstance(restorer, RestoreResUNet)
    stem = restorer.unet.stem[0].weight
    assert stem.grad is not None and stem.grad[:, 0].abs().sum() > 0  # the x_t channel
    for shift in restorer.shifts.parameters():
        assert shift.grad is not None and shift.grad.abs().sum() > 0


def test_resunet_initialisation_is_refused_when_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="depth-3, 8-feature restorer on 1 channels"):
        ColdDiffusion(features=8, depth=3, restorer="resunet").initialise_from(_trained_resunet())
    with pytest.raises(ValueError, match="'resunet' from a ResUNet"):
        ColdDiffusion(features=8, depth=2, restorer="resunet").initialise_from(_trained_dncnn())


def test_sampling_steps_set_the_forward_pass_only() -> None:
    """A preset's steps change the output; other samples keep every trained level."""
    model = ColdDiffusion(in_channels=1, noise_scale=0.05, steps=4, features=8, depth=2,
                          restorer="resunet")  # fmt: skip
    model.initialise_from(_trained_resunet())
    with torch.no_grad():  # make the restorer depend on x_t, so steps matter
        model.restorer.unet.stem[0].weight[:, 0].normal_(0.0, 0.3)
    model.eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.inference_mode():
        full, one = model.sample(x), model.sample(x, steps=1)
        assert not torch.allclose(full, one, atol=1e-4)
        model.sampling_steps = 1
        torch.testing.assert_close(model(x), one, rtol=0, atol=0)
        torch.testing.assert_close(model.sample(x, seed=0), full, rtol=0, atol=0)
