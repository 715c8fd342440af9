"""Thin Prefect tasks over medimg's pipeline steps."""
