"""Inference engine: runs any zoo network over a whole volume on CPU or GPU.

Slices are batched; a slice too large for the memory budget is cut into overlapping
tiles whose borders are discarded (only each tile's centre is kept), so tiles meet without
seams; a GPU out-of-memory error halves the batch, then the tile, and tries again.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.base import ModelInfo, ProgressCallback, SlicesReady, Spacing
from models.checkpoint import ModelCard

logger = logging.getLogger(__name__)


class MemoryBudgetExceeded(torch.OutOfMemoryError):
    """A forward call would exceed the configured memory budget (treated like a real OOM)."""


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs a network.

    ``max_batch_pixels`` bounds the input pixels (batch x height x width) of one forward
    call, the engine's memory budget; 0 means unbounded. ``tile_overlap`` is the border
    (input pixels) discarded around each tile; it must cover the network's receptive field
    for tiled output to equal untiled output.
    """

    device: str = "auto"
    batch_size: int = 8
    max_batch_pixels: int = 0
    tile_size: int = 256
    tile_overlap: int = 32
    # On a GPU: "fp32" computes as a CPU does; "tf32" (TensorFloat-32 convolutions) and
    # "bf16" (autocast) are faster and change output pixels by up to a few HU
    # (docs/benchmarks.md). A CPU always computes in float32.
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    channels_last: bool = True
    compile: bool = False
    # Fold each BatchNorm that follows a convolution into that convolution's weights and
    # bias (the same map at inference, one pass over the data fewer), in a copy: the
    # given network's weights and layers stay as they were.
    fold_batch_norm: bool = True
    # Keep the whole volume on the device: clip, normalise, batch, run, denormalise and
    # restore there, with one copy in and one out (None: on a GPU only). A volume that
    # does not fit falls back to the host path.
    resident: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be >= 16, got {self.tile_size}")
        if self.tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0, got {self.tile_overlap}")
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"precision must be fp32, tf32 or bf16, got {self.precision!r}")


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """A copy of ``network`` (in eval mode) in which every BatchNorm2d that directly
    follows a Conv2d or ConvTranspose2d in an ``nn.Sequential`` is folded into it
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and replaced by an identity; ``network``
    itself when it has none. Outputs equal the original's to float rounding."""

    def foldable(sequential: nn.Sequential) -> Iterator[tuple[str, str]]:
        for first, second in itertools.pairwise(list(sequential._modules)):
            conv, norm = sequential._modules[first], sequential._modules[second]
            if (
                isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                # torch folds a transposed convolution of one group only
                and not (isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1)
                and isinstance(norm, nn.BatchNorm2d)
                and norm.running_mean is not None
            ):
                yield first, second

    sequentials = [m for m in network.modules() if isinstance(m, nn.Sequential)]
    if not any(True for sequential in sequentials for _ in foldable(sequential)):
        return network
    network = copy.deepcopy(network).eval()
    for sequential in [m for m in network.modules() if isinstance(m, nn.Sequential)]:
        for first, second in list(foldable(sequential)):
            conv, norm = sequential._modules[first], sequential._modules[second]
            assert isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
            assert isinstance(norm, nn.BatchNorm2d)
            sequential._modules[first] = fuse_conv_bn_eval(
                conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d)
            )
            sequential._modules[second] = nn.Identity()
    return network


def _tiles(length: int, core: int) -> Iterator[tuple[int, int]]:
    """Cut [0, length) into consecutive cores of at most ``core`` pixels."""
    for start in range(0, length, core):
        yield start, min(start + core, length)


class NetworkEnhancer:
    """A network and its card, behaving as an ``Enhancer`` (volume in, volume out).

    ``strength`` in [0, 1] blends the output with the input (1: the network's output),
    the way vendors expose low/medium/high; it applies to same-grid models only.
    """

    def __init__(
        self,
        network: nn.Module,
        card: ModelCard,
        options: EngineOptions | None = None,
        strength: float = 1.0,
    ) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be within [0, 1], got {strength}")
        self.card = card
        self.options = options or EngineOptions()
        self.strength = strength
        self.device = resolve_device(self.options.device)
        self._batch_size = self.options.batch_size
        self._tile_size = self.options.tile_size
        network = network.to(self.device).eval()
        if self.options.fold_batch_norm:
            network = fold_batch_norms(network)
        if self.options.channels_last:
            # NHWC is faster for convolutions on current CPUs and on tensor-core GPUs.
            network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = network
        self._local = threading.local()  # a per-thread stand-in network (resample)
        self._network: Callable[[torch.Tensor], torch.Tensor] = network
        if self.options.compile:
            self._network = torch.compile(network)

    @property
    def stochastic(self) -> bool:
        """Whether the network draws noise (a diffusion sampler with noise): its outputs
        for other seeds differ, and their spread measures what it is unsure of."""
        sample = getattr(self.network, "sample", None)
        noise = float(getattr(self.network, "noise_scale", 0))
        return callable(sample) and hasattr(self.network, "seed") and noise > 0

    def resample(
        self, volume: np.ndarray, spacing_mm: Spacing, draw: int, index: int | None
    ) -> np.ndarray:
        """Slice ``index`` of ``volume`` (None: every slice) enhanced again with another
        draw of the network's full sampler (seed: the network's own plus ``draw``, every
        trained step), normalised and post-processed as in a run over the whole volume;
        (rows x scale, columns x scale), or the volume."""
        if not self.stochastic:
            raise ValueError(f"{self.card.name} is deterministic: it has no other samples")
        if index is not None and not 0 <= index < volume.shape[0]:
            raise ValueError(f"index {index} is outside a volume of {volume.shape[0]} slices")
        seed = int(getattr(self.network, "seed")) + draw  # noqa: B009 - a sampler's attribute
        sample = getattr(self.network, "sample")  # noqa: B009
        # Per thread: a run of another series at the same time keeps the network's seed.
        self._local.network = lambda batch: sample(batch, seed=seed)
        try:
            if index is None:
                return self._enhance(volume, list(range(volume.shape[0])))
            return self._enhance(volume, [index])[0]
        finally:
            self._local.network = None

    def _sampling(self) -> tuple[int, int] | None:
        """(sampling steps, trained levels) of a diffusion preset that sets its steps."""
        steps = getattr(self.network, "sampling_steps", None)
        levels = getattr(self.network, "steps", None)
        return (steps, levels) if isinstance(steps, int) and isinstance(levels, int) else None

    @property
    def info(self) -> ModelInfo:
        """The card's provenance summary, with the strength this enhancer applies (a
        super-resolution result is never blended, so its strength is 1) and, for a
        diffusion preset sampling fewer steps than its levels, how many."""
        applied = self.strength if self.card.scale_factor == 1 else 1.0
        info = dataclasses.replace(self.card.info, strength=applied)
        if self.reduced_steps:
            steps, levels = self._sampling() or (0, 0)
            sampled = f"sampled in {steps} of {levels} steps"
            info = dataclasses.replace(info, description=f"{info.description}; {sampled}",
                                       variant=f"steps={steps}/{levels}")  # fmt: skip
        return info

    @property
    def reduced_steps(self) -> bool:
        """Whether the output is sampled in fewer steps than the sampler's levels (a
        preset's ``steps``): the output is then not one of the full sampler's samples."""
        sampling = self._sampling()
        return sampling is not None and sampling[0] < sampling[1]

    # -- normalisation -----------------------------------------------------------

    @staticmethod
    def _normalise(volume: np.ndarray, low: float, high: float) -> np.ndarray:
        return ((volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)).astype(
            np.float32
        )

    @staticmethod
    def _denormalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
        return (values * np.float32(high - low) + np.float32(low)).astype(np.float32)

    # -- forward passes ----------------------------------------------------------

    def _forward(self, batch: torch.Tensor, host: bool = True) -> torch.Tensor:
        budget = self.options.max_batch_pixels
        pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
        if budget and pixels > budget:
            raise MemoryBudgetExceeded(f"{pixels} pixels exceed the budget of {budget}")
        batch = batch.to(self.device, non_blocking=True)
        autocast: Any = nullcontext()
        if self.device.type == "cuda":
            # Process-wide switches, set on every call: PyTorch's default lets cuDNN use
            # TensorFloat-32, which the default precision (fp32) must not.
            tf32 = self.options.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            if self.options.precision == "bf16":
                autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        if self.options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        network = getattr(self._local, "network", None) or self._network
        with autocast:
            out = network(batch)
        return out.float().cpu() if host else out.float().contiguous()

    def _forward_tiled(self, batch: torch.Tensor, host: bool = True) -> torch.Tensor:
        """Run ``batch`` (N, C, H, W) in overlapping tiles; only tile centres are kept."""
        n, _, height, width = batch.shape
        scale = self.card.scale_factor
        core, margin = self._tile_size, self.options.tile_overlap
        out = torch.empty((n, 1, height * scale, width * scale), dtype=torch.float32,
                          device="cpu" if host else self.device)  # fmt: skip
        for y0, y1 in _tiles(height, core):
            for x0, x1 in _tiles(width, core):
                ty0, ty1 = max(0, y0 - margin), min(height, y1 + margin)
                tx0, tx1 = max(0, x0 - margin), min(width, x1 + margin)
                result = self._forward(batch[:, :, ty0:ty1, tx0:tx1], host)
                out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
                    :,
                    :,
                    (y0 - ty0) * scale : (y1 - ty0) * scale,
                    (x0 - tx0) * scale : (x1 - tx0) * scale,
                ]
        return out

    def _run_batch(self, batch: torch.Tensor, host: bool = True) -> torch.Tensor:
        """Forward one batch, falling back to smaller batches and tiles on OOM; the result
        on the host, or with ``host`` False on the device."""
        height, width = batch.shape[2], batch.shape[3]
        whole = max(height, width) <= self._tile_size
        try:
            return self._forward(batch, host) if whole else self._forward_tiled(batch, host)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch.shape[0] > 1:
                half = math.ceil(batch.shape[0] / 2)
                self._batch_size = max(1, min(self._batch_size, half))
                logger.warning("out of memory (%s); batch size now %d", exc, self._batch_size)
                return torch.cat([self._run_batch(part, host) for part in batch.split(half)])
            if self._tile_size > 32:
                self._tile_size = max(32, min(self._tile_size, max(height, width)) // 2)
                logger.warning("out of memory (%s); tile size now %d", exc, self._tile_size)
                return self._run_batch(batch, host)
            raise torch.OutOfMemoryError(
                f"out of memory at one slice in tiles of {self._tile_size} pixels, the "
                f"smallest the engine tries: {exc}"
            ) from exc

    def _context_stack(self, volume: torch.Tensor, index: int) -> torch.Tensor:
        """(C, H, W): the slice and its neighbours, edge slices repeated (2.5D input)."""
        half = self.card.context_slices // 2
        picks = [min(max(index + k, 0), volume.shape[0] - 1) for k in range(-half, half + 1)]
        return volume[picks]

    # -- the Enhancer contract -----------------------------------------------------

    def __call__(
        self,
        volume: np.ndarray,
        spacing_mm: Spacing,
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, Spacing]:
        """Enhance ``volume`` (z, y, x) in modality units; returns values and spacing."""
        if volume.ndim != 3:
            raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
        scale = self.card.scale_factor
        result = self._enhance(volume, list(range(volume.shape[0])), progress)
        new_spacing = (spacing_mm[0], spacing_mm[1] / scale, spacing_mm[2] / scale)
        return result, new_spacing

    def enhance_streaming(
        self,
        volume: np.ndarray,
        spacing_mm: Spacing,
        ready: SlicesReady,
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, Spacing]:
        """As ``__call__``, handing each batch's final values to ``ready`` as it is done
        (on the host path; the device-resident path hands the volume over at the end)."""
        if volume.ndim != 3:
            raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
        scale = self.card.scale_factor
        result = self._enhance(volume, list(range(volume.shape[0])), progress, ready)
        new_spacing = (spacing_mm[0], spacing_mm[1] / scale, spacing_mm[2] / scale)
        return result, new_spacing

    def _enhance(
        self,
        volume: np.ndarray,
        indices: list[int],
        progress: ProgressCallback | None = None,
        ready: SlicesReady | None = None,
    ) -> np.ndarray:
        """Slices ``indices`` of ``volume`` enhanced, normalised from the whole volume;
        ``ready`` (whole volume only) gets finished slices as they are done."""
        resident = self.options.resident
        if resident or (resident is None and self.device.type == "cuda"):
            try:
                result = self._enhance_resident(volume, indices, progress)
            except torch.OutOfMemoryError as exc:
                logger.warning("the volume does not fit on %s (%s): slice by slice", self.device,
                               exc)  # fmt: skip
            else:
                if ready is not None:
                    ready(0, result)
                return result
            if self.device.type == "cuda":  # out of the handler: its tensors are freed now
                torch.cuda.empty_cache()
        return self._enhance_host(volume, indices, progress, ready)

    def _enhance_resident(
        self, volume: np.ndarray, indices: list[int], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """:meth:`_enhance_host`'s steps in float32 on the device (a GPU divides by a
        multiplication with the reciprocal: the last bit may differ)."""
        scale = self.card.scale_factor
        low, high = self.card.intensity_range(volume)
        valid_low, valid_high = self.card.output_range(volume)
        sent = torch.from_numpy(np.ascontiguousarray(volume)).to(self.device)
        if not sent.dtype.is_floating_point:
            sent = sent.to(torch.float64 if sent.element_size() > 2 else torch.float32)
        # As numpy: clip in the stored type, then (x - low) / (high - low) in float32.
        clipped = sent.clamp(valid_low, valid_high).to(torch.float32)
        source = (clipped - float(np.float32(low))) / float(np.float32(high - low))
        del clipped
        _, height, width = source.shape
        output = torch.empty((len(indices), height * scale, width * scale),
                             dtype=torch.float32, device=self.device)  # fmt: skip
        half = self.card.context_slices // 2
        offsets = torch.arange(-half, half + 1, device=self.device)
        wanted = torch.tensor(indices, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            start = 0
            while start < len(indices):
                stop = min(len(indices), start + self._batch_size)
                picks = (wanted[start:stop, None] + offsets).clamp(0, source.shape[0] - 1)
                output[start:stop] = self._run_batch(source[picks], host=False)[:, 0]
                start = stop
                if progress is not None:
                    progress(stop, len(indices))
        del source
        result = output * float(np.float32(high - low)) + float(np.float32(low))
        del output
        original = sent[wanted] if len(indices) != volume.shape[0] else sent
        if scale == 1 and self.strength < 1.0:
            base = original.to(torch.float32)
            result = base + float(np.float32(self.strength)) * (result - base)
        result.clamp_(valid_low, valid_high)
        outside = (original < valid_low) | (original > valid_high)
        if bool(outside.any()):
            values = original.to(torch.float32)
            if scale > 1:
                outside = outside.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
                values = values.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            result[outside] = values[outside]
        return result.cpu().numpy()

    def _enhance_host(
        self,
        volume: np.ndarray,
        indices: list[int],
        progress: ProgressCallback | None = None,
        ready: SlicesReady | None = None,
    ) -> np.ndarray:
        """Slices ``indices`` of ``volume`` enhanced, normalised from the whole volume.

        Each batch is finished as soon as the network returns it (denormalised, blended
        by strength, clipped, out-of-range pixels restored: all per pixel) and handed to
        ``ready``; no later step touches it.
        """
        scale = self.card.scale_factor
        low, high = self.card.intensity_range(volume)
        valid_low, valid_high = self.card.output_range(volume)
        # Pixels outside the range the network was trained on (padding at -2048 or -3024,
        # metal above 3071 HU) are no tissue it knows: it sees them clamped to the range,
        # and they come back exactly as they were sent (see ``_restore_out_of_range``).
        source = torch.from_numpy(
            self._normalise(np.clip(volume, valid_low, valid_high), low, high)
        )
        _, height, width = source.shape
        result = np.empty((len(indices), height * scale, width * scale), dtype=np.float32)
        with torch.inference_mode():
            start = 0
            while start < len(indices):
                stop = min(len(indices), start + self._batch_size)
                wanted = indices[start:stop]
                batch = torch.stack([self._context_stack(source, i) for i in wanted])
                done = self._denormalise(self._run_batch(batch)[:, 0].numpy(), low, high)
                # Consecutive indices (the whole volume): a view, not a copy.
                consecutive = wanted == list(range(wanted[0], wanted[0] + len(wanted)))
                original_values = (
                    volume[wanted[0] : wanted[0] + len(wanted)] if consecutive else volume[wanted]
                )
                if scale == 1 and self.strength < 1.0:
                    original = original_values.astype(np.float32)
                    done = original + np.float32(self.strength) * (done - original)
                np.clip(done, valid_low, valid_high, out=done)
                _restore_out_of_range(original_values, done, valid_low, valid_high, scale)
                result[start:stop] = done
                if ready is not None:
                    ready(start, result[start:stop])
                start = stop
                if progress is not None:
                    progress(stop, len(indices))
        return result


def _restore_out_of_range(
    volume: np.ndarray, result: np.ndarray, low: float, high: float, scale: int
) -> None:
    """Copy every input pixel outside [low, high] into ``result`` unchanged (in place).

    On a finer grid (``scale`` > 1) each such pixel fills its ``scale`` x ``scale`` block,
    so padding stays padding with the same value and extent.
    """
    outside = (volume < low) | (volume > high)
    if not outside.any():
        return
    values = volume.astype(np.float32)
    if scale > 1:
        outside = outside.repeat(scale, axis=1).repeat(scale, axis=2)
        values = values.repeat(scale, axis=1).repeat(scale, axis=2)
    result[outside] = values[outside]


def bicubic_upsample(volume: np.ndarray, scale: int) -> np.ndarray:
    """In-plane bicubic upsampling of a volume (z, y, x): the super-resolution baseline."""
    tensor = torch.from_numpy(volume.astype(np.float32))[:, None]
    up = F.interpolate(tensor, scale_factor=scale, mode="bicubic", align_corners=False)
    return up[:, 0].numpy()
