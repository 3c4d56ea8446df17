"""Research code that reads DICOM: training runs, evaluation reports, comparisons (`pacs-lab`)."""
