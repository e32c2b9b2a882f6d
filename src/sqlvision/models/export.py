"""PyTorch to ONNX, checked: the exported graph must reproduce PyTorch's output on real inputs."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np

from sqlvision.errors import SqlvisionError

# Stated tolerance of the export check, on logits: |onnx - torch| <= ATOL + RTOL * |torch|.
RTOL = 1e-3
ATOL = 1e-4


def with_features(model: Any) -> Any:
    """Wrap a classifier so it returns ``(logits, features)``: the penultimate-layer vector
    (timm's pre-logits) comes out of the same graph, for embeddings and similarity search."""
    import torch

    class WithFeatures(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> tuple[Any, Any]:
            features = self.inner.forward_head(self.inner.forward_features(x), pre_logits=True)
            return self.inner.get_classifier()(features), features

    return WithFeatures(model).eval()


def _outputs(model: Any, x: Any) -> list[np.ndarray]:
    out = model(x)
    return [t.float().numpy() for t in (out if isinstance(out, tuple | list) else (out,))]


def to_onnx(model: Any, example: np.ndarray) -> bytes:
    """Export ``model`` (eval mode) with a dynamic batch dimension; returns the ONNX bytes.

    A model with timm's ``forward_features``/``forward_head`` API gets a second output,
    ``features`` (N x D), beside ``logits`` (N x classes).
    """
    import torch

    model = model.eval()
    if hasattr(model, "forward_features") and hasattr(model, "get_classifier"):
        model = with_features(model)
    x = torch.from_numpy(np.ascontiguousarray(example[:2] if len(example) > 1 else example))
    with torch.no_grad():
        names = ["logits", "features"][: len(_outputs(model, x))]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    quiet = io.StringIO()
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                        output_names=names, verbose=False,
                                        dynamic_shapes=({0: batch},), optimize=True)
    except Exception as exc:
        raise SqlvisionError(f"ONNX export failed: {str(exc).splitlines()[0]}",
                             "try another architecture, or report the model name") from exc
    finally:
        torch_logger.setLevel(level)
    if program is None:
        raise SqlvisionError("ONNX export produced no program", "try another architecture")
    return program.model_proto.SerializeToString()


def check_export(model: Any, onnx_bytes: bytes, batch: np.ndarray) -> float:
    """Compare ONNX Runtime's outputs with PyTorch's on ``batch``; raise beyond the tolerance.

    Returns the largest absolute difference seen (recorded with the model).
    """
    import onnxruntime as ort
    import torch

    model = model.eval()
    if hasattr(model, "forward_features") and hasattr(model, "get_classifier"):
        model = with_features(model)
    with torch.no_grad():
        expected = _outputs(model, torch.from_numpy(np.ascontiguousarray(batch)))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch})
    worst = 0.0
    for name, g, e in zip(("logits", "features"), got, expected, strict=False):
        if g.shape != e.shape:
            raise SqlvisionError(f"ONNX {name} shape {g.shape} differs from PyTorch's {e.shape}",
                                 "the export is broken; try another architecture")
        diff = float(np.max(np.abs(g - e))) if g.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(g, e, rtol=RTOL, atol=ATOL):
            raise SqlvisionError(
                f"ONNX {name} differ from PyTorch's by up to {diff:.3g} (tolerance: atol {ATOL}, "
                f"rtol {RTOL})", "the exported model would predict differently; not registered")
    return worst


def bundle_from_torch(model: Any, *, name: str, architecture: str, classes: list[str],
                      spec: Any, example: np.ndarray, metrics: dict[str, Any] | None = None,
                      config: dict[str, Any] | None = None,
                      lineage: dict[str, Any] | None = None) -> Any:
    """Export ``model`` to ONNX, check it on ``example`` (uint8 pixels from ``spec``), and wrap
    graph, weights and metadata in a :class:`~sqlvision.models.bundle.ModelBundle`."""
    from sqlvision.models.bundle import ModelBundle, weights_to_bytes

    model = model.float().cpu().eval()
    batch = spec.normalize(example)
    onnx_bytes = to_onnx(model, batch)
    max_diff = check_export(model, onnx_bytes, batch)
    return ModelBundle(name=name, architecture=architecture, classes=list(classes), spec=spec,
                       onnx=onnx_bytes, weights=weights_to_bytes(model.state_dict()),
                       metrics={**(metrics or {}), "onnx_max_abs_diff": max_diff},
                       config=config or {}, lineage=lineage or {})
