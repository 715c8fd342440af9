"""Prefect flows composing medimg's tasks."""
