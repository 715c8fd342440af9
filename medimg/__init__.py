"""medimg: a workflow-orchestrated MLOps platform for medical image classification."""

__version__ = "0.1.0"
