"""The inference engine: exact identity, tiling, batching, OOM fallback, SR geometry."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from models.checkpoint import ModelCard
from models.engine import EngineOptions, NetworkEnhancer, bicubic_upsample, resolve_device
from models.networks import build_network


def _card(
    architecture: str, kwargs: dict[str, object], context: int = 1, scale: int = 1
) -> ModelCard:
    return ModelCard(
        name="t", version="1", task="super_resolution" if scale > 1 else "denoise",
        modality="CT", architecture=architecture, arch_kwargs=kwargs,
        context_slices=context, scale_factor=scale, weights_sha256="0" * 64,
    )  # fmt: skip


def _volume(depth: int = 4, size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 30, (depth, size, size)).round()
    volume[:, :10] = -1000
    return volume.astype(np.float32)


def _trained_like(network: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    for parameter in network.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return network.eval()


def test_untrained_residual_network_is_exact_identity_in_hu() -> None:
    kwargs = {"in_channels": 3, "features": 8, "depth": 3}
    enhancer = NetworkEnhancer(
        build_network("dncnn", **kwargs), _card("dncnn", kwargs, 3), EngineOptions(device="cpu")
    )
    volume = _volume()
    out, spacing = enhancer(volume, (2.5, 0.7, 0.7))
    np.testing.assert_array_equal(out, volume)
    assert spacing == (2.5, 0.7, 0.7) and out.dtype == np.float32


def test_pixels_outside_the_trained_range_come_back_unchanged() -> None:
    """Padding (-2048, -3024) and dense material above 3071 HU are returned exactly as
    sent; every other pixel stays within the valid range."""
    kwargs = {"in_channels": 3, "features": 8, "depth": 3}
    network = _trained_like(build_network("dncnn", **kwargs))
    enhancer = NetworkEnhancer(network, _card("dncnn", kwargs, 3), EngineOptions(device="cpu"))
    volume = _volume()
    volume[:, :, :6] = -3024.0  # GE padding outside the scan field
    volume[1, :, -4:] = -2048.0
    volume[2, 50:53, 50:53] = 3500.0  # metal
    volume[3, 60, 60] = 5000.0
    out, _ = enhancer(volume, (1, 1, 1))
    outside = (volume < -1024) | (volume > 3071)
    np.testing.assert_array_equal(out[outside], volume[outside])
    inside = out[~outside]
    assert inside.min() >= -1024 and inside.max() <= 3071
    assert not np.array_equal(inside, volume[~outside])  # the network did change tissue


def test_super_resolution_keeps_padding_blocks() -> None:
    kwargs = {"in_channels": 1}
    network = _trained_like(build_network("sr_light", **kwargs))
    enhancer = NetworkEnhancer(network, _card("sr_light", kwargs, scale=2),
                               EngineOptions(device="cpu"))  # fmt: skip
    volume = _volume(depth=1, size=40)
    volume[0, :, :5] = -2048.0
    out, _ = enhancer(volume, (1, 1, 1))
    np.testing.assert_array_equal(out[0, :, :10], -2048.0)
    assert out[0, :, 10:].min() >= -1024


@pytest.mark.parametrize(("architecture", "kwargs"), [
    ("dncnn", {"in_channels": 3, "features": 8, "depth": 4}),
    ("resunet", {"in_channels": 3, "features": 8, "depth": 2}),
])  # fmt: skip
def test_tiled_equals_untiled(architecture: str, kwargs: dict[str, object]) -> None:
    network = _trained_like(build_network(architecture, **kwargs))
    card = _card(architecture, kwargs, 3)
    volume = _volume(size=100)
    whole, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu", tile_size=512))(
        volume, (1, 1, 1)
    )
    tiled_engine = NetworkEnhancer(
        network, card, EngineOptions(device="cpu", tile_size=32, tile_overlap=24)
    )
    tiled, _ = tiled_engine(volume, (1, 1, 1))
    assert not np.array_equal(whole, volume)  # the network does something
    np.testing.assert_allclose(tiled, whole, atol=0.05)


def test_batching_does_not_change_results() -> None:
    kwargs = {"in_channels": 3, "features": 8, "depth": 3}
    network = _trained_like(build_network("dncnn", **kwargs))
    card = _card("dncnn", kwargs, 3)
    volume = _volume(depth=7)
    one, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu", batch_size=1))(
        volume, (1, 1, 1)
    )
    many, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu", batch_size=4))(
        volume, (1, 1, 1)
    )
    np.testing.assert_allclose(one, many, atol=1e-3)


def test_out_of_memory_falls_back_to_smaller_batches_then_tiles() -> None:
    kwargs = {"in_channels": 3, "features": 8, "depth": 4}
    network = _trained_like(build_network("dncnn", **kwargs))
    card = _card("dncnn", kwargs, 3)
    volume = _volume(depth=6, size=96)
    reference, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu"))(volume, (1, 1, 1))
    # A budget below one slice (96 x 96 = 9216 pixels) forces batch 1 and then tiles.
    options = EngineOptions(device="cpu", batch_size=6, max_batch_pixels=6000, tile_overlap=8)
    small = NetworkEnhancer(network, card, options)
    out, _ = small(volume, (1, 1, 1))
    assert small._batch_size == 1 and small._tile_size < 96
    np.testing.assert_allclose(out, reference, atol=0.05)


def test_budget_too_small_for_any_tile_raises() -> None:
    kwargs = {"in_channels": 1, "features": 8, "depth": 3}
    options = EngineOptions(device="cpu", max_batch_pixels=100, tile_overlap=8)
    enhancer = NetworkEnhancer(build_network("dncnn", **kwargs), _card("dncnn", kwargs), options)
    with pytest.raises(torch.OutOfMemoryError):
        enhancer(_volume(depth=1), (1, 1, 1))


def test_super_resolution_returns_new_grid_and_spacing() -> None:
    kwargs = {"in_channels": 1}
    enhancer = NetworkEnhancer(
        build_network("sr_light", **kwargs),
        _card("sr_light", kwargs, scale=2),
        EngineOptions(device="cpu"),
    )
    volume = _volume(depth=2, size=40)
    out, spacing = enhancer(volume, (3.0, 0.8, 0.6))
    assert out.shape == (2, 80, 80) and spacing == (3.0, 0.4, 0.3)
    # Untrained LightSR is bicubic interpolation (clipped to the valid range).
    np.testing.assert_allclose(out, np.clip(bicubic_upsample(volume, 2), -1024, 3071), atol=0.05)


def test_strength_blends_towards_the_input() -> None:
    kwargs = {"in_channels": 1, "features": 8, "depth": 3}
    network = _trained_like(build_network("dncnn", **kwargs))
    card = _card("dncnn", kwargs)
    volume = _volume(depth=1)
    full, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu"), strength=1.0)(
        volume, (1, 1, 1)
    )
    half, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu"), strength=0.5)(
        volume, (1, 1, 1)
    )
    inside = (full > -1024) & (full < 3071)
    np.testing.assert_allclose(half[inside], (volume + 0.5 * (full - volume))[inside], atol=0.05)
    with pytest.raises(ValueError, match="strength"):
        NetworkEnhancer(network, card, strength=1.5)


def test_progress_is_reported_per_batch() -> None:
    kwargs = {"in_channels": 1, "features": 8, "depth": 3}
    enhancer = NetworkEnhancer(
        build_network("dncnn", **kwargs),
        _card("dncnn", kwargs),
        EngineOptions(device="cpu", batch_size=2),
    )
    seen: list[tuple[int, int]] = []
    enhancer(_volume(depth=5, size=32), (1, 1, 1), lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu_in_float32_and_bf16_within_its_tolerance() -> None:
    kwargs = {"in_channels": 3, "features": 16, "depth": 5}
    network = _trained_like(build_network("dncnn", **kwargs))
    card = _card("dncnn", kwargs, 3)
    volume = _volume(depth=8, size=128)
    cpu, _ = NetworkEnhancer(network, card, EngineOptions(device="cpu"))(volume, (1, 1, 1))
    gpu, _ = NetworkEnhancer(network, card, EngineOptions(device="cuda"))(volume, (1, 1, 1))
    assert np.abs(gpu - cpu).max() < 0.05  # the default, fp32: no TensorFloat-32
    bf16 = EngineOptions(device="cuda", precision="bf16")
    fast, _ = NetworkEnhancer(network, card, bf16)(volume, (1, 1, 1))
    assert np.abs(fast - cpu).mean() < 5.0


def test_resample_draws_another_sample_without_touching_the_shared_seed() -> None:
    from models.registry import ModelRegistry

    network, card = ModelRegistry().load("ct-diffusion-cold")
    enhancer = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
    assert enhancer.stochastic
    rng = np.random.default_rng(0)
    volume = (rng.normal(40.0, 30.0, (3, 32, 32))).astype(np.float32)
    first, _ = enhancer(volume, (2.5, 0.7, 0.7))
    seed = network.seed
    draw = enhancer.resample(volume, (2.5, 0.7, 0.7), draw=1, index=1)
    assert draw.shape == (32, 32) and network.seed == seed
    assert not np.array_equal(draw, first[1])  # another draw of the sampler
    assert np.abs(draw - first[1]).mean() < 5.0  # of the same image
    again, _ = enhancer(volume, (2.5, 0.7, 0.7))
    np.testing.assert_array_equal(again, first)  # the fixed seed, as before
    with pytest.raises(ValueError, match="outside"):
        enhancer.resample(volume, (2.5, 0.7, 0.7), draw=1, index=3)


def test_deterministic_networks_have_no_other_samples() -> None:
    card = ModelCard(name="t", version="0", task="denoise", modality="CT",
                     architecture="dncnn", arch_kwargs={"depth": 3, "features": 4})  # fmt: skip
    enhancer = NetworkEnhancer(build_network("dncnn", depth=3, features=4), card)
    assert not enhancer.stochastic
    with pytest.raises(ValueError, match="deterministic"):
        enhancer.resample(np.zeros((1, 8, 8), np.float32), (1.0, 1.0, 1.0), draw=1, index=0)


@pytest.mark.parametrize(
    ("architecture", "kwargs", "context", "scale", "strength"),
    [
        ("dncnn", {"in_channels": 3, "features": 8, "depth": 3}, 3, 1, 1.0),
        ("dncnn", {"in_channels": 3, "features": 8, "depth": 3}, 3, 1, 0.5),
        ("resunet", {"in_channels": 1, "features": 4, "depth": 2}, 1, 1, 1.0),
        ("sr_light", {"in_channels": 1}, 1, 2, 1.0),
    ],
)
def test_the_device_resident_path_gives_the_host_paths_result(
    architecture: str, kwargs: dict[str, object], context: int, scale: int, strength: float
) -> None:
    """The path a GPU takes (the whole volume on the device) run on the CPU: the same
    values as the host path, padding and metal included, for stored int16 and float32."""
    network = _trained_like(build_network(architecture, **kwargs))
    card = _card(architecture, kwargs, context, scale)
    volume = _volume(depth=5, size=64)
    volume[:, :, :6] = -3024.0
    volume[1, :, -4:] = -2048.0
    volume[2, 30:33, 30:33] = 3500.0
    for stored in (volume, volume.astype(np.int16)):
        results = [
            NetworkEnhancer(
                network,
                card,
                EngineOptions(device="cpu", batch_size=2, resident=resident),
                strength,
            )(stored, (1, 1, 1))[0]
            for resident in (False, True)
        ]
        np.testing.assert_allclose(results[1], results[0], rtol=0, atol=1e-3)
        outside = (volume < -1024) | (volume > 3071)
        if scale > 1:
            outside = outside.repeat(scale, axis=1).repeat(scale, axis=2)
        assert np.all(np.isin(results[1][outside], [-3024.0, -2048.0, 3500.0]))


def test_the_device_resident_path_enhances_chosen_slices_and_mr_ranges() -> None:
    kwargs = {"in_channels": 3, "features": 8, "depth": 3}
    network = _trained_like(build_network("dncnn", **kwargs))
    card = dataclasses.replace(_card("dncnn", kwargs, 3), modality="MR", normalisation="volume")
    volume = np.abs(_volume(depth=6, size=48)) * 3
    host = NetworkEnhancer(network, card, EngineOptions(device="cpu", resident=False))
    device = NetworkEnhancer(network, card, EngineOptions(device="cpu", resident=True))
    np.testing.assert_allclose(device(volume, (1, 1, 1))[0], host(volume, (1, 1, 1))[0],
                               rtol=0, atol=1e-3)  # fmt: skip
    np.testing.assert_allclose(device._enhance(volume, [0, 4]), host._enhance(volume, [0, 4]),
                               rtol=0, atol=1e-3)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("architecture", "kwargs", "context", "scale", "strength"),
    [
        ("dncnn", {"in_channels": 3, "features": 8, "depth": 3}, 3, 1, 0.5),
        ("resunet", {"in_channels": 1, "features": 4, "depth": 2}, 1, 1, 1.0),
        ("sr_light", {"in_channels": 1}, 1, 2, 1.0),
    ],
)
def test_the_gpu_path_gives_the_cpu_result_with_padding_kept(
    architecture: str, kwargs: dict[str, object], context: int, scale: int, strength: float
) -> None:
    """On a GPU (resident path, fp32, the default): the CPU's values to 0.05 HU, and
    padding and metal exactly as sent, for stored int16 and float32."""
    network = _trained_like(build_network(architecture, **kwargs))
    card = _card(architecture, kwargs, context, scale)
    volume = _volume(depth=5, size=64)
    volume[:, :, :6] = -3024.0
    volume[1, :, -4:] = -2048.0
    volume[2, 30:33, 30:33] = 3500.0
    for stored in (volume, volume.astype(np.int16)):
        # Each enhancer moves the network it is given to its device: one copy each.
        cpu = NetworkEnhancer(copy.deepcopy(network), card, EngineOptions(device="cpu"), strength)
        gpu = NetworkEnhancer(copy.deepcopy(network), card, EngineOptions(device="cuda"), strength)
        expected, _ = cpu(stored, (1, 1, 1))
        got, _ = gpu(stored, (1, 1, 1))
        np.testing.assert_allclose(got, expected, rtol=0, atol=0.05)
        outside = (volume < -1024) | (volume > 3071)
        if scale > 1:
            outside = outside.repeat(scale, axis=1).repeat(scale, axis=2)
        np.testing.assert_array_equal(got[outside], expected[outside])


def _with_running_statistics(network: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm running statistics and an affine map far from the identity,
    as training leaves them (a fresh layer's would make folding trivially exact)."""
    generator = torch.Generator().manual_seed(3)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(size, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            module.weight.data.copy_(1 + 0.5 * torch.randn(size, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(size, generator=generator))
    return network


@pytest.mark.parametrize(
    ("architecture", "kwargs", "context"),
    [
        ("resunet", {"in_channels": 1, "features": 8, "depth": 3}, 1),  # ConvTranspose2d too
        ("dncnn", {"in_channels": 3, "features": 8, "depth": 4}, 3),
    ],
)
def test_batch_norm_folding_keeps_the_output_and_leaves_the_given_network_alone(
    architecture: str, kwargs: dict[str, object], context: int
) -> None:
    network = _with_running_statistics(_trained_like(build_network(architecture, **kwargs)))
    before = copy.deepcopy(network.state_dict())
    card = _card(architecture, kwargs, context)
    volume = _volume()
    folded = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
    plain = NetworkEnhancer(network, card, EngineOptions(device="cpu", fold_batch_norm=False))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.network.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.network.modules())
    out_folded, _ = folded(volume, (1, 1, 1))
    out_plain, _ = plain(volume, (1, 1, 1))
    assert np.abs(out_plain - volume).max() > 1.0  # the network changes the image
    np.testing.assert_allclose(out_folded, out_plain, atol=0.01)  # HU
    after = network.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("resident", [False, True])
def test_streaming_hands_over_every_slice_once_in_order_with_the_same_values(
    resident: bool,
) -> None:
    kwargs = {"in_channels": 3, "features": 8, "depth": 3}
    network = _trained_like(build_network("dncnn", **kwargs))
    card = _card("dncnn", kwargs, 3)
    options = EngineOptions(device="cpu", batch_size=2, resident=resident)
    enhancer = NetworkEnhancer(network, card, options, strength=0.5)
    volume = _volume(depth=5)
    volume[:, :, :6] = -3024.0  # padding: restored per batch as for the whole volume
    # The reference: the host path over the whole volume in one batch.
    reference = EngineOptions(device="cpu", batch_size=8, resident=False)
    one_batch = NetworkEnhancer(network, card, reference, strength=0.5)
    whole, spacing = one_batch(volume, (2.0, 0.5, 0.5))
    handed: list[tuple[int, np.ndarray]] = []
    streamed, streamed_spacing = enhancer.enhance_streaming(
        volume, (2.0, 0.5, 0.5), lambda first, values: handed.append((first, values.copy()))
    )
    np.testing.assert_allclose(streamed, whole, atol=1e-3)  # HU; the same arithmetic
    assert streamed_spacing == spacing
    firsts = [first for first, _ in handed]
    # The host path hands over each batch of 2; the device-resident path the whole volume.
    assert firsts == ([0] if resident else [0, 2, 4])
    np.testing.assert_array_equal(np.concatenate([v for _, v in handed]), streamed)
    assert (streamed[:, :, :6] == -3024.0).all()
