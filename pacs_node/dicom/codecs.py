"""Compressed Pixel Data: which transfer syntaxes the node accepts, and the decoders behind
them (pydicom's pixel handlers with permissively licensed plugins).

======================================  =======================  =========================
Transfer syntax                         Decoder                  Licence
======================================  =======================  =========================
JPEG baseline, extended 8/12-bit,       imagecodecs              BSD-3 (libjpeg-turbo 3:
lossless (.50 .51 .57 .70)              (libjpeg-turbo 3)        IJG / BSD-3 / zlib)
JPEG-LS lossless, near-lossless         pyjpegls (CharLS)        MIT (CharLS BSD-3)
(.80 .81)
JPEG 2000 lossless, lossy (.90 .91),    pylibjpeg-openjpeg       MIT (OpenJPEG BSD-2)
HTJ2K (.201 .202 .203)                  (OpenJPEG)
RLE lossless (.5)                       pylibjpeg-rle            MIT
Deflated Explicit VR LE (.1.99)         pydicom (zlib)           MIT
======================================  =======================  =========================

pydicom has no plugin for imagecodecs; :func:`register` adds one for the JPEG syntaxes,
since the other permissive JPEG decoders it knows (Pillow, GDCM's wheel) stop at 8-bit
JPEG Extended and 12-bit CT is common there, and pylibjpeg-libjpeg is GPLv3.
docs/transfer-syntaxes.md has the measured decode times behind these choices.
"""

from __future__ import annotations

import threading

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import UID

try:
    import imagecodecs

    _HAVE_LIBJPEG_TURBO = bool(imagecodecs.JPEG8.available)
except ImportError:  # pragma: no cover - a dependency of the node
    _HAVE_LIBJPEG_TURBO = False

# Accepted by the SCP and STOW-RS besides the uncompressed syntaxes (the order is the
# SCP's preference when a sender proposes several).
COMPRESSED: tuple[UID, ...] = (
    uid.JPEG2000Lossless,
    uid.JPEGLSLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.RLELossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEG2000,
    uid.JPEGLSNearLossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.HTJ2K,
)
# Syntaxes whose pixel data lose information: the derived series must say so (PS3.3
# C.7.6.1.1.5, Lossy Image Compression) with the method.
LOSSY_METHODS: dict[str, str] = {
    uid.JPEGBaseline8Bit: "ISO_10918_1",
    uid.JPEGExtended12Bit: "ISO_10918_1",
    uid.JPEGLSNearLossless: "ISO_14495_1",
    uid.JPEG2000: "ISO_15444_1",
    uid.HTJ2K: "ISO_15444_15",
}

_JPEG = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1",) for syntax in _JPEG}
PLUGIN = "pacs-node-imagecodecs"
_registered = threading.Lock()


def is_available(syntax: str) -> bool:
    """Whether this module's plugin decodes ``syntax`` here (pydicom's plugin contract)."""
    return _HAVE_LIBJPEG_TURBO and syntax in _JPEG


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG frame (8- or 12-bit lossy, 2- to 16-bit lossless) decoded by libjpeg-turbo;
    its samples as stored, which pydicom then reads with the dataset's pixel module."""
    if runner.samples_per_pixel != 1:  # colour: leave it to Pillow, which handles YCbCr
        raise NotImplementedError("the imagecodecs plugin decodes single-sample JPEG only")
    return bytes(imagecodecs.jpeg8_decode(src).tobytes())


def register() -> None:
    """Add the imagecodecs plugin to pydicom's JPEG decoders, after their own (once)."""
    from pydicom.pixels.decoders.base import get_decoder

    with _registered:
        for syntax in _JPEG:
            try:
                get_decoder(syntax).add_plugin(PLUGIN, (__name__, "_decode_frame"))
            except ValueError:  # already added (this module supports every one of _JPEG)
                continue


class DecodeError(ValueError):
    """Pixel Data that the decoders could not read, with their reason."""


def pixel_array(ds: Dataset) -> np.ndarray:
    """``ds.pixel_array``, with every decoder failure as :class:`DecodeError`.

    Some decoders are native code that reports malformed input with a panic that is not an
    ``Exception`` (pyo3's ``PanicException``, e.g. pylibjpeg-rle on a short segment); left
    alone it would pass every ``except Exception`` and end the receiving thread or worker.
    """
    try:
        return ds.pixel_array
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc


def decodable(syntax: str) -> bool:
    """Whether the node can decode Pixel Data in ``syntax`` (uncompressed included)."""
    from pydicom.pixels.decoders.base import get_decoder

    register()
    syntax = UID(syntax)
    if not syntax.is_compressed:
        return syntax.is_transfer_syntax
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False
