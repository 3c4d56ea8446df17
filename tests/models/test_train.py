"""Training: patch sampling with a noise bank, a short run that learns, resumable state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import ModelCard
from models.networks import build_network
from models.train import DevicePatchSampler, PatchSampler, TrainConfig, degrade_for_sr, train


def _card(**changes: object) -> ModelCard:
    fields: dict[str, object] = {
        "name": "t", "version": "0", "task": "denoise", "modality": "CT",
        "architecture": "dncnn", "arch_kwargs": {"in_channels": 3, "features": 8, "depth": 3},
        "context_slices": 3,
    }  # fmt: skip
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_sampler_pairs_each_patch_with_the_same_crop_of_its_noise() -> None:
    volume = np.arange(4 * 20 * 20, dtype=np.float32).reshape(4, 20, 20)
    bank = np.stack([volume * 0 + 1, volume * 0 + 2])  # two draws, constant per draw
    sampler = PatchSampler([volume], context=3, patch=8, seed=0, noise=[bank])
    clean, noise = sampler.sample(16)
    assert clean.shape == (16, 3, 8, 8) and noise is not None and noise.shape == (1, *clean.shape)
    assert set(np.unique(noise)) <= {1.0, 2.0}
    # Neighbouring context slices differ by one slice (400) or are the repeated edge slice.
    assert set(np.unique(clean[:, 1, 0, 0] - clean[:, 0, 0, 0])) <= {0.0, 400.0}
    plain, none = PatchSampler([volume], 1, 8, 0).sample(2)
    assert none is None and plain.shape == (2, 1, 8, 8)


def test_short_training_with_a_noise_bank_reduces_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clean = np.zeros((6, 48, 48), dtype=np.float32)
    clean[:, 12:36, 12:36] = 60.0
    bank = rng.normal(0, 30, (2, *clean.shape)).astype(np.float32)
    card = _card()
    network = build_network("dncnn", **card.arch_kwargs)
    config = TrainConfig(steps=150, batch_size=8, patch=32, learning_rate=3e-3, save_every=1000)
    train(network, card, [clean], config, "denoise", tmp_path, noise_bank=[bank])
    assert not network.training
    noisy = torch.from_numpy(
        (clean[None, :3] + rng.normal(0, 30, (1, 3, 48, 48))).astype(np.float32)
    )
    with torch.inference_mode():
        out = network((noisy + 1024) / 4096) * 4096 - 1024
    before = float((noisy[0, 1] - torch.from_numpy(clean[1])).std())
    after = float((out[0, 0] - torch.from_numpy(clean[1])).std())
    assert after < 0.8 * before


def test_training_resumes_from_its_saved_state(tmp_path: Path) -> None:
    volume = np.random.default_rng(1).normal(0, 20, (4, 40, 40)).astype(np.float32)
    card = _card()
    config = TrainConfig(steps=4, batch_size=2, patch=32, save_every=2)
    first = build_network("dncnn", **card.arch_kwargs)
    seen: list[int] = []
    train(
        first,
        card,
        [volume],
        config,
        "denoise",
        tmp_path,
        lambda step, total, loss: seen.append(step),
    )
    assert seen == [1, 2, 3, 4]
    assert not (tmp_path / "t.train-state.pt").exists()  # removed when training completes
    # A run stopped after step 2 leaves the state; the next call continues at step 3.
    partial = TrainConfig(steps=4, batch_size=2, patch=32, save_every=2)
    second = build_network("dncnn", **card.arch_kwargs)
    optimiser = torch.optim.AdamW(second.parameters())
    state = {
        "network": second.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, 4).state_dict(),
        "sampler_rng": np.random.default_rng(0),
        "noise_rng": np.random.default_rng(1),
        "step": 2,
    }
    torch.save(state, tmp_path / "t.train-state.pt")
    resumed: list[int] = []
    train(
        second,
        card,
        [volume],
        partial,
        "denoise",
        tmp_path,
        lambda step, total, loss: resumed.append(step),
    )
    assert resumed == [3, 4]


def test_a_state_saved_by_another_run_is_refused(tmp_path: Path) -> None:
    # A leftover state of a run with other arguments (say, other starting weights) must not
    # be resumed under this run's card.
    volume = np.random.default_rng(1).normal(0, 20, (4, 40, 40)).astype(np.float32)
    card = _card()
    network = build_network("dncnn", **card.arch_kwargs)
    optimiser = torch.optim.AdamW(network.parameters())
    state = {
        "network": network.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, 4).state_dict(),
        "sampler_rng": np.random.default_rng(0),
        "noise_rng": np.random.default_rng(1),
        "step": 2,
        "run_key": "run-a",
    }
    torch.save(state, tmp_path / "t.train-state.pt")
    config = TrainConfig(steps=4, batch_size=2, patch=32, save_every=2)
    with pytest.raises(ValueError, match="another training run"):
        train(network, card, [volume], config, "denoise", tmp_path, run_key="run-b")
    assert (tmp_path / "t.train-state.pt").exists()
    steps: list[int] = []
    train(network, card, [volume], config, "denoise", tmp_path,
          lambda step, total, loss: steps.append(step), run_key="run-a")  # fmt: skip
    assert steps == [3, 4]


def test_sr_degradation_halves_the_grid() -> None:
    images = torch.rand(2, 1, 32, 32)
    low = degrade_for_sr(images, 2)
    assert low.shape == (2, 1, 16, 16)
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert torch.allclose(degrade_for_sr(flat, 2), torch.full((1, 1, 16, 16), 0.3))


def test_noise2noise_pairs_use_two_independent_draws(tmp_path: Path) -> None:
    volume = np.zeros((3, 40, 40), dtype=np.float32)
    bank = np.random.default_rng(2).normal(0, 30, (2, 3, 40, 40)).astype(np.float32)
    sampler = PatchSampler([volume], context=3, patch=16, seed=0, noise=[bank])
    _, noise = sampler.sample(4, draws=2)
    assert noise is not None and noise.shape == (2, 4, 3, 16, 16)
    assert not np.array_equal(noise[0], noise[1])
    with pytest.raises(ValueError, match="3 independent noise draws"):
        sampler.sample(1, draws=3)
    card = _card()
    network = build_network("dncnn", **card.arch_kwargs)
    losses: list[float] = []
    config = TrainConfig(steps=3, batch_size=2, patch=16, save_every=100)
    train(
        network, card, [volume], config, "noise2noise", tmp_path,
        lambda step, total, loss: losses.append(loss), noise_bank=[bank],
    )  # fmt: skip
    # The target is noisy: even the untrained identity has a large L1 (about 0.8 σ·√2).
    assert len(losses) == 3 and losses[0] > 10


def test_diffusion_mode_trains_the_conditional_model(tmp_path: Path) -> None:
    volume = np.random.default_rng(3).normal(0, 20, (3, 32, 32)).astype(np.float32)
    card = _card(
        task="diffusion",
        architecture="cold_diffusion",
        arch_kwargs={"in_channels": 3, "steps": 2, "features": 8},
    )
    network = build_network("cold_diffusion", **card.arch_kwargs)
    before = [p.detach().clone() for p in network.parameters()]
    config = TrainConfig(steps=3, batch_size=2, patch=16, save_every=100)
    train(network, card, [volume], config, "diffusion", tmp_path)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    assert changed > 0


def test_tensorboard_logs_loss_and_learning_rate_per_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kwargs = {"in_channels": 1, "features": 8, "depth": 3}
    card = ModelCard(name="tb", version="0", task="denoise", modality="CT",
                     architecture="dncnn", arch_kwargs=kwargs)  # fmt: skip
    volume = np.full((2, 48, 48), 40.0, dtype=np.float32)
    train(build_network("dncnn", **kwargs), card, [volume], TrainConfig(steps=4, batch_size=2,
          patch=32), "denoise", tmp_path / "out", log_dir=tmp_path / "tb")  # fmt: skip
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    rates = [e.value for e in events.Scalars("learning_rate")]
    assert rates[0] > rates[-1]  # cosine decay


def test_a_variational_network_adds_its_weighted_kl_term() -> None:
    import torch.nn.functional as F

    from models.networks import build_network
    from models.train import _reconstruction_loss

    torch.manual_seed(0)
    vae = build_network("vae", in_channels=1, features=4, depth=2, latent_channels=2).eval()
    inputs, target = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    l1 = F.l1_loss(vae(inputs), target)
    _, mu, logvar = vae.forward_with_latent(inputs)
    kl = vae.kl_divergence(mu, logvar) / (32 * 32)
    assert float(kl.detach()) > 0
    plain = _reconstruction_loss(vae, inputs, target, TrainConfig(kl_weight=0.0))
    weighted = _reconstruction_loss(vae, inputs, target, TrainConfig(kl_weight=0.5))
    assert torch.allclose(plain, l1) and torch.allclose(weighted, l1 + 0.5 * kl)
    dncnn = build_network("dncnn", in_channels=1, features=4, depth=3).eval()
    assert torch.allclose(
        _reconstruction_loss(dncnn, inputs, target, TrainConfig(kl_weight=0.5)),
        F.l1_loss(dncnn(inputs), target),
    )


def test_by_slice_sampling_weighs_volumes_by_their_slice_count() -> None:
    big = np.zeros((30, 16, 16), dtype=np.float32)
    small = np.ones((2, 16, 16), dtype=np.float32)
    by_volume = PatchSampler([big, small], 1, 16, seed=0).sample(400)[0]
    by_slice = PatchSampler([big, small], 1, 16, seed=0, by_slice=True).sample(400)[0]
    share_volume = float(by_volume[:, 0, 0, 0].mean())  # patches from the small volume
    share_slice = float(by_slice[:, 0, 0, 0].mean())
    assert 0.4 < share_volume < 0.6
    assert 0.02 < share_slice < 0.12  # 2 of 32 slices: 6 %


def test_device_sampler_cuts_each_patch_and_its_noise_at_one_place() -> None:
    # Pixel values encode (slice, row, column); noise draw d adds 10**6 * (d + 1), so each
    # crop can be traced back to where it was cut.
    slices, size = 5, 24
    z, y, x = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    coded = (10_000 * z + 100 * y + x).astype(np.float32)
    first, second = coded[:3], coded[3:]  # two volumes: context must not cross between them
    banks = [np.stack([v + 1e6 * (d + 1) for d in range(4)]) for v in (first, second)]
    sampler = DevicePatchSampler([first, second], 3, 8, 0, banks, by_slice=True, device="cpu")
    clean, noise = sampler.sample(64, draws=2)
    assert clean.shape == (64, 3, 8, 8) and noise.shape == (2, 64, 3, 8, 8)
    centre = clean[:, 1].numpy()
    zs = (centre // 10_000).astype(int)
    for k, (neighbour, step) in enumerate([(clean[:, 0], -1), (clean[:, 2], 1)]):
        got = (neighbour.numpy() // 10_000).astype(int)[:, 0, 0]
        volume_first = np.where(zs[:, 0, 0] < 3, 0, 3)
        volume_last = np.where(zs[:, 0, 0] < 3, 2, 4)
        expected = np.clip(zs[:, 0, 0] + step, volume_first, volume_last)
        assert np.array_equal(got, expected), k
    rows = (centre % 10_000) // 100
    cols = centre % 100
    assert np.all(np.diff(rows, axis=1) == 1)  # whole rows, in order
    steps = np.diff(cols, axis=2)
    flipped = np.all(steps == -1, axis=(1, 2))
    assert np.all(flipped | np.all(steps == 1, axis=(1, 2))) and 0 < flipped.sum() < 64
    draw_index = (noise.numpy()[:, :, 0, 0, 0] // 1e6).astype(int) - 1  # (draws, count)
    assert np.all(draw_index[0] != draw_index[1])  # two distinct draws per patch
    residual = noise.numpy() - 1e6 * (draw_index[:, :, None, None, None] + 1)
    assert np.array_equal(residual, np.broadcast_to(clean.numpy(), residual.shape))
    with pytest.raises(ValueError, match="5 independent noise draws"):
        sampler.sample(1, draws=5)
    with pytest.raises(ValueError, match="one slice size"):
        DevicePatchSampler([first, coded[:, :20]], 1, 8, 0, [banks[0], banks[0][:, :, :20]],
                           by_slice=False, device="cpu")  # fmt: skip


def test_device_sampling_trains_and_resumes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clean = np.zeros((6, 48, 48), dtype=np.float32)
    clean[:, 12:36, 12:36] = 60.0
    bank = rng.normal(0, 30, (2, *clean.shape)).astype(np.float32)
    card = _card()
    config = TrainConfig(steps=150, batch_size=8, patch=32, learning_rate=3e-3,
                         save_every=1000, patch_sampling="device")  # fmt: skip
    network = build_network("dncnn", **card.arch_kwargs)
    train(network, card, [clean], config, "denoise", tmp_path, noise_bank=[bank])
    noisy = torch.from_numpy(
        (clean[None, :3] + rng.normal(0, 30, (1, 3, 48, 48))).astype(np.float32)
    )
    with torch.inference_mode():
        out = network((noisy + 1024) / 4096) * 4096 - 1024
    before = float((noisy[0, 1] - torch.from_numpy(clean[1])).std())
    after = float((out[0, 0] - torch.from_numpy(clean[1])).std())
    assert after < 0.8 * before
    # Stopped after 3 of 6 steps and resumed: the same weights as 6 steps in one go.
    short = TrainConfig(steps=6, batch_size=2, patch=32, save_every=3, patch_sampling="device")
    whole = build_network("dncnn", **card.arch_kwargs)
    torch.manual_seed(5)
    start = {k: v.clone() for k, v in whole.state_dict().items()}
    train(whole, card, [clean], short, "denoise", tmp_path / "whole", noise_bank=[bank])
    halves = build_network("dncnn", **card.arch_kwargs)
    halves.load_state_dict(start)

    def stop_after_three(step: int, total: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(halves, card, [clean], short, "denoise", tmp_path / "halves", stop_after_three,
              noise_bank=[bank])  # fmt: skip
    assert (tmp_path / "halves" / "t.train-state.pt").is_file()
    resumed = build_network("dncnn", **card.arch_kwargs)
    train(resumed, card, [clean], short, "denoise", tmp_path / "halves", noise_bank=[bank])
    for name, value in whole.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name
    with pytest.raises(ValueError, match="needs a noise bank"):
        train(resumed, card, [clean], short, "denoise", tmp_path / "none")


def test_sampler_crops_the_native_noise_with_the_patch() -> None:
    volume = np.arange(2 * 24 * 24, dtype=np.float32).reshape(2, 24, 24)
    native = np.stack([volume * 2, volume * 2])  # each draw: twice the volume
    sampler = PatchSampler([volume], context=1, patch=8, seed=3, native=[native])
    clean, _ = sampler.sample(32)
    assert sampler.last_native is not None
    # The same window and the same left-right flip as the patch.
    np.testing.assert_array_equal(sampler.last_native, 2 * clean)
    with pytest.raises(ValueError, match="native noise"):
        PatchSampler([volume], 1, 8, 0, native=[native[:, :1]])


def test_device_sampler_crops_the_native_noise_with_the_patch() -> None:
    volume = np.arange(3 * 24 * 24, dtype=np.float32).reshape(3, 24, 24)
    bank = np.stack([volume * 0, volume * 0])
    native = np.stack([volume * 2 + 1e6 * d for d in range(3)])  # three fields per slice
    sampler = DevicePatchSampler([volume], 3, 8, 0, [bank], by_slice=True, device="cpu",
                                 native=[native])  # fmt: skip
    clean, _ = sampler.sample(64)
    own = sampler.last_native
    assert own is not None and own.shape == clean.shape
    # The same slices, window and flip as the patch; one field per patch, all fields used.
    field = torch.div(own, 1e6, rounding_mode="floor")
    torch.testing.assert_close(own - field * 1e6, 2 * clean)
    assert set(field[:, 0, 0, 0].tolist()) == {0.0, 1.0, 2.0}
    assert torch.equal(field, field[:, :1, :1, :1].expand_as(field))


def test_recorruption_needs_a_native_bank(tmp_path: Path) -> None:
    card = _card(arch_kwargs={"in_channels": 1, "features": 4, "depth": 2}, context_slices=1)
    network = build_network("dncnn", **card.arch_kwargs)
    config = TrainConfig(steps=1, batch_size=2, patch=16, recorrupt_alpha=0.5)
    volume = np.zeros((1, 20, 20), dtype=np.float32)
    with pytest.raises(ValueError, match="native noise bank"):
        train(network, card, [volume], config, "denoise", tmp_path)


def test_recorruption_trains_with_patches_cut_on_the_device(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    reference = rng.normal(40, 20, (2, 32, 32)).astype(np.float32)
    card = _card(arch_kwargs={"in_channels": 1, "features": 4, "depth": 2}, context_slices=1)
    config = TrainConfig(steps=3, batch_size=4, patch=16, save_every=10**6, recorrupt_alpha=0.5,
                         patch_sampling="device")  # fmt: skip
    added = rng.normal(0, 30, (2, *reference.shape)).astype(np.float32)
    trained = []
    for scale in (0.0, 1.0):  # fields of zero: the plain pairs; else recorrupted ones
        own = scale * rng.normal(0, 20, (2, *reference.shape)).astype(np.float32)
        torch.manual_seed(0)
        network = build_network("dncnn", **card.arch_kwargs)
        train(network, card, [reference], config, "denoise", tmp_path / str(scale),
              noise_bank=[added], native_bank=[own])  # fmt: skip
        trained.append(network)
    # The same seed, patches and noise: only the native fields differ, and they were used.
    assert any(not torch.equal(a, b) for a, b in
               zip(trained[0].parameters(), trained[1].parameters(), strict=True))  # fmt: skip


def test_recorruption_and_noise_textures_are_checked(tmp_path: Path) -> None:
    volume = np.zeros((3, 20, 20), dtype=np.float32)
    native = [np.zeros((1, 3, 20, 20), dtype=np.float32)]
    network = build_network("dncnn", **_card().arch_kwargs)
    with pytest.raises(ValueError, match="2D networks only"):
        train(network, _card(), [volume], TrainConfig(steps=1, batch_size=2, patch=16,
              recorrupt_alpha=0.5), "denoise", tmp_path, native_bank=native)  # fmt: skip
    with pytest.raises(ValueError, match="noise_cutoff"):
        train(network, _card(), [volume], TrainConfig(steps=1, batch_size=2, patch=16,
              noise_cutoff=(0.0, 0.5)), "denoise", tmp_path)  # fmt: skip


def _denoiser_trained_on_noisy_references(
    tmp_path: Path, clean: np.ndarray, reference: np.ndarray, alpha: float
) -> torch.nn.Module:
    rng = np.random.default_rng(5)
    card = _card(arch_kwargs={"in_channels": 1, "features": 16, "depth": 4}, context_slices=1)
    torch.manual_seed(0)
    network = build_network("dncnn", **card.arch_kwargs)
    added = rng.normal(0, 20, (4, *clean.shape)).astype(np.float32)
    own = rng.normal(0, 20, (4, *clean.shape)).astype(np.float32)  # the references' σ
    config = TrainConfig(steps=300, batch_size=8, patch=32, learning_rate=3e-3, save_every=10**6,
                         recorrupt_alpha=alpha)  # fmt: skip
    train(network, card, [reference], config, "denoise", tmp_path / str(alpha),
          noise_bank=[added], native_bank=[own] if alpha > 0 else None)  # fmt: skip
    return network


def test_recorruption_teaches_the_clean_image_not_the_noisy_reference(tmp_path: Path) -> None:
    # References carry noise of their own (σ 20 HU). Trained plainly, a network keeps it;
    # recorrupted with fields of that noise, it learns to remove it as well.
    rng = np.random.default_rng(2)
    clean = np.zeros((8, 64, 64), dtype=np.float32)
    clean[:, 16:48, 16:48] = 80.0
    reference = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
    plain = _denoiser_trained_on_noisy_references(tmp_path, clean, reference, 0.0)
    recorrupted = _denoiser_trained_on_noisy_references(tmp_path, clean, reference, 0.5)
    # A new scan like the references: its own noise only, no added noise.
    scan = clean[:1] + rng.normal(0, 20, (1, 64, 64)).astype(np.float32)
    errors = {}
    for name, network in (("plain", plain), ("recorrupted", recorrupted)):
        with torch.inference_mode():
            out = network(torch.from_numpy((scan[None] + 1024) / 4096)) * 4096 - 1024
        errors[name] = float((out[0, 0] - torch.from_numpy(clean[0])).std())
    assert errors["recorrupted"] < 0.8 * errors["plain"], errors
