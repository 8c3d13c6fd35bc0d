"""Training: one loop for every registered model."""
