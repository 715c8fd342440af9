"""Data sources, the manifest and data versions."""
