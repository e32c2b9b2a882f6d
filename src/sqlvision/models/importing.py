"""Registering models made elsewhere: sqlvision bundles, or plain ONNX classifiers."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.bundle import ModelBundle, read_labels_file
from sqlvision.preprocess import PreprocessSpec


def import_model(backend: Backend, name: str, path: str | os.PathLike[str], *,
                 labels: str | None = None, image_size: tuple[int, int] = (224, 224),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 grayscale: bool = False, resize: str = "crop",
                 resampler: str | None = None) -> ModelBundle:
    """Register the model at ``path`` as the next version of ``name``; returns the bundle."""
    source = Path(path)
    if not source.is_file():
        raise SqlvisionError(f"model file not found: {source}", "check the path")
    if zipfile.is_zipfile(source):
        bundle = ModelBundle.read(source)
        bundle.lineage = {**bundle.lineage, "imported_from": str(source),
                          "original": f"{bundle.name}:{bundle.version}"}
        bundle.name = name
        return registry.save(backend, bundle)
    onnx_bytes = self_contained_onnx(source)
    if labels is None:
        raise SqlvisionError(f"{source} is a plain ONNX file: its class names are unknown",
                             "pass --labels FILE with one class name per line, in output order")
    classes = read_labels_file(labels)
    mode = "L" if grayscale else "RGB"
    spec = PreprocessSpec.for_images(image_size[0], image_size[1], mode, resize=resize,
                                     mean=mean, std=std, resampler=resampler)
    bundle = ModelBundle(name=name, architecture="onnx", classes=classes, spec=spec,
                         onnx=onnx_bytes, lineage={"imported_from": str(source)})
    _check_onnx(bundle)
    return registry.save(backend, bundle)


def self_contained_onnx(source: Path) -> bytes:
    """The ONNX model at ``source`` as one self-contained serialization: weights kept in
    external data files (``model.onnx.data``, as ``torch.onnx.export`` writes for most real
    networks) are read relative to the model file, wherever the command runs, and stored
    inline, so the registered model never points back at the disk."""
    import onnx
    from google.protobuf.message import DecodeError

    not_onnx = SqlvisionError(f"{source} is not a model: neither a sqlvision bundle (.zip) nor "
                              "an ONNX file", "give a .onnx file or a bundle from 'models export'")
    try:
        model = onnx.load(str(source), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise not_onnx from exc
    if model.ir_version <= 0 or not model.graph.node or not model.graph.input:
        raise not_onnx
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return source.read_bytes()
    try:
        onnx.load_external_data_for_model(model, str(source.resolve().parent))
    except (OSError, ValueError) as exc:
        raise SqlvisionError(f"cannot read the external data of {source}: {exc}",
                             "keep the .onnx file beside its data file(s), as exported") from exc
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise SqlvisionError(f"{source} is too large to store as one ONNX model ({exc})",
                             "export a smaller model, or quantize it first") from exc


def _check_onnx(bundle: ModelBundle) -> None:
    """The graph must load, take one N x C x H x W input matching the spec and output one
    score per class."""
    import numpy as np

    from sqlvision.models.runtime import OnnxClassifier

    try:
        classifier = OnnxClassifier(bundle)
    except Exception as exc:
        raise SqlvisionError(f"cannot load the ONNX model: {str(exc).splitlines()[0]}",
                             "check that the file is a valid ONNX model") from exc
    x = np.zeros((1, *bundle.spec.input_shape), np.float32)
    try:
        out = classifier.logits(x)
    except Exception as exc:
        raise SqlvisionError(
            f"the model does not accept input 1x{'x'.join(map(str, bundle.spec.input_shape))}: "
            f"{str(exc).splitlines()[0]}", "set --image-size and --grayscale to what it expects") from exc
    if out.ndim != 2 or out.shape[1] != len(bundle.classes):
        raise SqlvisionError(f"the model outputs shape {list(out.shape)} but --labels lists "
                             f"{len(bundle.classes)} classes", "give one label per output")
