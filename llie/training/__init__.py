"""Training and evaluation: paired data, synthetic darkening, the training run, per-stage scores."""
