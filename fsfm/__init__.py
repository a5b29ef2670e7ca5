"""fsfm: the shared core of the FSFM face-security service.

Holds what training and serving both need, and nothing else: the face pipeline (detect, crop,
normalise), the inference engines over ONNX Runtime, the model-package format and the FSFM ViT
(the latter imports PyTorch lazily, so serving runs without it).
"""

__version__ = "0.1.0"
