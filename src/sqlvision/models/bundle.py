"""A model bundle: the ONNX graph, its preprocessing spec, classes and provenance, in one piece.

On disk a bundle is a zip (``.svmodel``): ``model.onnx``, ``sqlvision.json`` and, for models
sqlvision trained, ``weights.safetensors`` (the PyTorch weights, for fine-tuning with ``--from``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlvision.errors import SqlvisionError
from sqlvision.preprocess import PreprocessSpec

FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """Everything needed to run, inspect and retrain a classifier."""

    name: str
    architecture: str
    classes: list[str]
    spec: PreprocessSpec
    onnx: bytes
    weights: bytes | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    created_at: dt.datetime | None = None

    @property
    def ref(self) -> str:
        """``name:version`` (or just the name before it is registered)."""
        return f"{self.name}:{self.version}" if self.version is not None else self.name

    def metadata(self) -> dict[str, Any]:
        """The JSON side of the bundle."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "classes": self.classes,
            "preprocessing": self.spec.to_dict(),
            "metrics": self.metrics,
            "config": self.config,
            "lineage": self.lineage,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle as one zip file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("sqlvision.json", json.dumps(self.metadata(), indent=2, default=str))
            zf.writestr("model.onnx", self.onnx)
            if self.weights is not None:
                zf.writestr("weights.safetensors", self.weights)
        os.replace(tmp, target)
        return target

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelBundle:
        """Read a bundle written by :meth:`write`."""
        try:
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read("sqlvision.json"))
                onnx_bytes = zf.read("model.onnx")
                weights = zf.read("weights.safetensors") if "weights.safetensors" in zf.namelist() else None
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise SqlvisionError(f"{path} is not a sqlvision model bundle ({exc})",
                                 "import a plain ONNX file with --labels FILE instead") from exc
        created = meta.get("created_at")
        return cls(
            name=meta["name"], architecture=meta["architecture"], classes=list(meta["classes"]),
            spec=PreprocessSpec.from_dict(meta["preprocessing"]), onnx=onnx_bytes, weights=weights,
            metrics=meta.get("metrics") or {}, config=meta.get("config") or {},
            lineage=meta.get("lineage") or {}, version=meta.get("version"),
            created_at=dt.datetime.fromisoformat(created) if created else None,
        )

    def io_schema(self) -> dict[str, list[dict[str, Any]]]:
        """The ONNX graph's inputs and outputs: name, element type and shape (symbolic dims by name)."""
        import onnx

        model = onnx.load_model_from_string(self.onnx)

        def describe(values: Any) -> list[dict[str, Any]]:
            out = []
            for v in values:
                t = v.type.tensor_type
                dims = [d.dim_param or d.dim_value for d in t.shape.dim]
                out.append({"name": v.name, "type": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                            "shape": dims})
            return out

        initializers = {i.name for i in model.graph.initializer}
        return {"inputs": describe(i for i in model.graph.input if i.name not in initializers),
                "outputs": describe(model.graph.output)}


def weights_to_bytes(state_dict: dict[str, Any]) -> bytes:
    """A PyTorch state dict as safetensors bytes (no pickle: safe to load from a database)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})


def weights_from_bytes(data: bytes) -> dict[str, Any]:
    """The state dict stored by :func:`weights_to_bytes`."""
    from safetensors.torch import load

    return load(data)


def read_labels_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names for an imported model: one per line, in output order."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SqlvisionError(f"cannot read labels file {path}: {exc}", "check the path") from exc
    labels = [line.strip() for line in io.StringIO(text) if line.strip()]
    if not labels:
        raise SqlvisionError(f"labels file {path} is empty", "put one class name per line")
    return labels
