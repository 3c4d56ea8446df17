"""Enhancement models: arrays and a small metadata record in, arrays out; no DICOM, no queue."""
