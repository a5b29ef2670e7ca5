"""fsfm: the shared core of the FSFM face-security service.

Holds what training and serving both need, and nothing else: the face pipeline (detect, crop,
normalise), the inference engines over ONNX Runtime, the model-package format and the FSFM ViT
(the latter imports PyTorch lazily, so serving runs without it).

No fsfm process phones home: ONNX Runtime's telemetry (Microsoft's 1DS client, which otherwise
writes ``$TMPDIR/.ses`` on import and looks up ``mobile.events.data.microsoft.com``) is switched off
here, before anything can import ONNX Runtime, and again by every session's engine
(``fsfm/engines/onnxruntime.py``).
"""

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # read by ONNX Runtime when it is imported

__version__ = "0.1.0"
