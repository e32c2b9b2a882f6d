"""Models: architectures by name, the bundle format, the registry in the database, ONNX."""
