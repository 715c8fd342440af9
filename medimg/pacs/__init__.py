"""The PACS side of ``medimg serve``: Orthanc's REST and DICOMweb API, which instances a model may take, and the
DICOM objects (Structured Reports) that carry its results back."""
