"""`pacs-lab train` end to end on a small DICOM series: checkpoint, card, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lab.training import load_volumes, projection_noise_bank, train_model, training_phantoms
from models.checkpoint import load_checkpoint
from models.train import TrainConfig
from tests.helpers.synthetic import make_ct_series


def test_projection_noise_bank_has_the_calibrated_sigma() -> None:
    volume = np.zeros((2, 64, 64), dtype=np.float32) - 1000
    yy, xx = np.mgrid[:64, :64] - 32
    volume[:, xx**2 + yy**2 < 26**2] = 40.0
    [bank] = projection_noise_bank([volume], [2.0], draws=2, target_sigma_hu=15.0, seed=0,
                                   log=lambda _: None)  # fmt: skip
    assert bank.shape == (2, 2, 64, 64)
    inside = (xx**2 + yy**2) < 15**2
    assert 10.0 < float(bank[:, :, inside].std()) < 20.0
    assert not np.array_equal(bank[0], bank[1])


def test_training_phantoms_are_three_slice_volumes() -> None:
    volumes, spacings = training_phantoms(2, size=256)
    assert [v.shape for v in volumes] == [(3, 256, 256)] * 2 and len(spacings) == 2
    assert not np.array_equal(volumes[0], volumes[1])


def test_train_model_writes_a_loadable_checkpoint_with_metrics(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "data", n_slices=12, rows=64, cols=64)
    data = load_volumes(tmp_path / "data")
    assert [len(v) for v in data.train] == [9] and [len(v) for v in data.held_out] == [3]
    card_path = train_model(
        tmp_path / "data", tmp_path / "weights", name="tiny", version="0.0.1", mode="denoise",
        architecture="dncnn", arch_kwargs={"in_channels": 3, "features": 8, "depth": 3},
        context_slices=3, modality="CT", description="test",
        config=TrainConfig(steps=3, batch_size=2, patch=32), command="pacs-lab train ...",
        noise="projection", noise_draws=1, log=lambda _: None,
    )  # fmt: skip
    network, card = load_checkpoint(card_path)
    assert card.training["command"] == "pacs-lab train ..."
    assert "projection-domain" in card.training["noise"]
    metrics = card.metrics["added_noise_sigma_25_hu"]
    assert {"input_psnr_full_db", "model_psnr_full_db", "anisotropic_diffusion_rmse_hu"} <= set(
        metrics
    )
    assert not network.training


def test_the_same_command_reproduces_the_same_weights(tmp_path: Path) -> None:
    # Model cards promise that their training command reproduces the shipped file: with
    # fixed seeds two runs must write byte-identical weights, and another seed must not.
    make_ct_series(tmp_path / "data", n_slices=12, rows=64, cols=64)

    def run(output: str, seed: int) -> str:
        card_path = train_model(
            tmp_path / "data", tmp_path / output, name="tiny", version="0.0.1", mode="denoise",
            architecture="dncnn", arch_kwargs={"in_channels": 3, "features": 8, "depth": 3},
            context_slices=3, modality="CT", description="test",
            config=TrainConfig(steps=4, batch_size=2, patch=32, seed=seed, sampling="slice"),
            command="",
            noise="projection", noise_draws=2,
            log=lambda _: None,
        )  # fmt: skip
        return load_checkpoint(card_path)[1].weights_sha256

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert first == again
    assert other != first


def test_mr_trains_on_phantoms_alone_and_is_evaluated_on_held_out_mr(tmp_path: Path) -> None:
    card_path = train_model(
        None, tmp_path / "weights", name="mr-tiny", version="0.0.1", mode="denoise",
        architecture="dncnn", arch_kwargs={"in_channels": 1, "features": 8, "depth": 3},
        context_slices=1, modality="MR", description="test", phantoms=2,
        config=TrainConfig(steps=3, batch_size=2, patch=32), command="pacs-lab train ...",
        log=lambda _: None,
    )  # fmt: skip
    _network, card = load_checkpoint(card_path)
    assert card.normalisation == "volume" and card.modality == "MR"
    assert card.training["config"]["noise_model"] == "rician"
    assert "MR" in card.training["data"] and "Rician" in card.training["noise"]
    metrics = card.metrics["rician_sigma_3_percent"]
    assert {"input_psnr_db", "nlm_psnr_db", "gaussian_ssim", "model_ssim"} <= set(metrics)
    assert "pydicom_MR_small" in card.metrics["images"]


def test_ct_training_without_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data"):
        train_model(
            None, tmp_path, name="x", version="0", mode="denoise", architecture="dncnn",
            arch_kwargs={}, context_slices=1, modality="CT", description="",
            config=TrainConfig(steps=1), command="", phantoms=2, log=lambda _: None,
        )  # fmt: skip


def test_noise_bank_is_cached_under_a_digest_of_data_and_parameters(tmp_path: Path) -> None:
    volume = np.zeros((2, 48, 48), dtype=np.float32) - 1000
    yy, xx = np.mgrid[:48, :48] - 24
    volume[:, xx**2 + yy**2 < 20**2] = 40.0
    messages: list[str] = []
    first = projection_noise_bank([volume], [2.0], 1, 15.0, 0, messages.append, tmp_path)
    assert len(list(tmp_path.glob("bank-*.npz"))) == 1
    again = projection_noise_bank([volume], [2.0], 1, 15.0, 0, messages.append, tmp_path)
    assert any("loaded from" in m for m in messages)
    np.testing.assert_array_equal(first[0], again[0])
    # Another seed, another slice content: new banks, not the cached one.
    other_seed = projection_noise_bank([volume], [2.0], 1, 15.0, 1, messages.append, tmp_path)
    assert not np.array_equal(other_seed[0], first[0])
    changed = volume.copy()
    changed[:, 24, 24] = 500.0
    projection_noise_bank([changed], [2.0], 1, 15.0, 0, messages.append, tmp_path)
    assert len(list(tmp_path.glob("bank-*.npz"))) == 3


def test_cached_volumes_leave_the_generator_where_a_full_simulation_would(
    tmp_path: Path,
) -> None:
    first = np.zeros((2, 64, 64), dtype=np.float32) - 1000
    first[:, 8:56, 8:56] = 40.0
    second = first.copy()
    second[:, 28:34, 28:34] = 300.0
    quiet: list[str] = []
    projection_noise_bank([first], [2.0], 1, 15.0, 0, quiet.append, tmp_path)
    both = projection_noise_bank([first, second], [2.0, 2.0], 1, 15.0, 0, quiet.append, tmp_path)
    assert sum("loaded from" in m for m in quiet) == 1
    uncached = projection_noise_bank([first, second], [2.0, 2.0], 1, 15.0, 0, quiet.append)
    np.testing.assert_array_equal(both[0], uncached[0])
    np.testing.assert_array_equal(both[1], uncached[1])


def test_init_from_starts_a_diffusion_from_a_trained_denoiser(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "data", n_slices=12, rows=64, cols=64)
    common = dict(context_slices=3, modality="CT", description="test", command="",
                  noise="projection", noise_draws=1, log=lambda _: None)  # fmt: skip
    dncnn = {"in_channels": 3, "features": 8, "depth": 3}
    source = train_model(
        tmp_path / "data", tmp_path / "source", name="den", version="0.0.1", mode="denoise",
        architecture="dncnn", arch_kwargs=dncnn,
        config=TrainConfig(steps=2, batch_size=2, patch=32), **common,
    )  # fmt: skip
    source_card = load_checkpoint(source)[1]
    diffusion = {**dncnn, "steps": 3, "noise_scale": 0.01, "restorer": "dncnn"}
    card_path = train_model(
        tmp_path / "data", tmp_path / "diff", name="diff", version="0.0.1", mode="diffusion",
        architecture="cold_diffusion", arch_kwargs=diffusion,
        config=TrainConfig(steps=1, batch_size=2, patch=32), init_from=source, **common,
    )  # fmt: skip
    network, card = load_checkpoint(card_path)
    assert card.training["initialised_from"] == {
        "name": "den", "version": "0.0.1", "sha256": source_card.weights_sha256,
    }  # fmt: skip
    # One AdamW step (learning rate 1e-3) moves each weight by about 1e-3: the restorer's
    # first layer is still the source's, next to the x_t column that started at zero.
    source_first = load_checkpoint(source)[0].body[0].weight.detach()
    restorer_first = network.restorer.first.weight.detach()
    assert restorer_first.shape[1] == 4
    assert torch.allclose(restorer_first[:, 1:], source_first, atol=2e-3)
    assert float(restorer_first[:, 0].abs().max()) < 2e-3
    # The same architecture fine-tunes from its own checkpoint.
    tuned = train_model(
        tmp_path / "data", tmp_path / "tuned", name="diff", version="0.0.2", mode="diffusion",
        architecture="cold_diffusion", arch_kwargs=diffusion,
        config=TrainConfig(steps=1, batch_size=2, patch=32), init_from=card_path, **common,
    )  # fmt: skip
    assert load_checkpoint(tuned)[1].training["initialised_from"]["version"] == "0.0.1"
    mismatched = {**diffusion, "depth": 4}
    with pytest.raises(ValueError, match=r"den\.json: .*restorer"):
        train_model(
            tmp_path / "data", tmp_path / "bad", name="bad", version="0.0.1", mode="diffusion",
            architecture="cold_diffusion", arch_kwargs=mismatched,
            config=TrainConfig(steps=1, batch_size=2, patch=32), init_from=source, **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="does not fit a dncnn"):
        train_model(
            tmp_path / "data", tmp_path / "bad", name="bad", version="0.0.1", mode="denoise",
            architecture="dncnn", arch_kwargs={**dncnn, "features": 16},
            config=TrainConfig(steps=1, batch_size=2, patch=32), init_from=source, **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="1 slices"):
        train_model(
            tmp_path / "data", tmp_path / "bad", name="bad", version="0.0.1", mode="denoise",
            architecture="dncnn", arch_kwargs={**dncnn, "in_channels": 1},
            config=TrainConfig(steps=1, batch_size=2, patch=32), init_from=source,
            **{**common, "context_slices": 1},
        )  # fmt: skip
    (tmp_path / "source" / "den.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match=r"--init-from: .*corrupt"):
        train_model(
            tmp_path / "data", tmp_path / "bad", name="bad", version="0.0.1", mode="denoise",
            architecture="dncnn", arch_kwargs=dncnn,
            config=TrainConfig(steps=1, batch_size=2, patch=32), init_from=source, **common,
        )  # fmt: skip
    assert not (tmp_path / "bad").exists()
