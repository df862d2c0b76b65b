"""Training on synthetic scenes or the user's data, fine-tuning, evaluation and its metrics."""
