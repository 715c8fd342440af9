"""Data validation: Great Expectations suites over the manifest."""
