"""The DICOM edge: a pynetdicom Storage SCP whose handlers store durably and record in SQL."""
