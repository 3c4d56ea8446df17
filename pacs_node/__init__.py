"""PACS Enhancement Node: receive DICOM series, enhance them, return derived series."""

__version__ = "0.1.0"
