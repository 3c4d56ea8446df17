"""Training and evaluation of the node's models (the ``pacs-lab`` command)."""

from pathlib import Path

# The real-CT slice manifest (split by patient); kept here so modules that do not read
# DICOM (training from an exported set on a GPU machine) need not import pydicom.
CT_MANIFEST = Path(__file__).resolve().parent / "manifests" / "ct.json"
