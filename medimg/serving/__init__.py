"""``medimg serve``: the registered model as a long-running service (HTTP and a DICOM node on a PACS)."""
