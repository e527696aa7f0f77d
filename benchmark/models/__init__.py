"""Models: the registry of recognizers, mask detectors, landmarkers and face detectors (``registry``,
``catalog``), their implementations (SFace/ONNX, iResNet, dlib, the MaskNet CNN, RetinaNet), face alignment
templates (``align``), weight files and their hashes (``fetch``, ``hashes``, ``weights/``)."""
