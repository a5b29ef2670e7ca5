"""The FSFM ViT and its checkpoints (PyTorch; imported only by training and export code)."""
