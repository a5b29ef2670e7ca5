"""Training side: data preparation, FSFM pretraining, fine-tuning, evaluation, export (PyTorch)."""
