"""Segmentation (``task.kind: segmentation``): image/mask geometry, metrics, masks out as NIfTI and DICOM SEG."""
