"""Models, data loading and the training loop."""
