"""The HTTP edge: admin API (and, later, dashboard and DICOMweb routes)."""
