"""Static int8 quantization of a registered model with ONNX Runtime, calibrated on real rows.

The quantized graph is registered as the next version of the model only when it is faster than
the float one on this machine (measured side by side, per-core sessions as ``predict`` runs
them), with both accuracies recorded next to each other; otherwise the figures are reported and
nothing is registered (``force`` registers anyway).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.deps import require
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.bundle import ModelBundle
from sqlvision.models.runtime import CPU_BATCH, OnnxClassifier
from sqlvision.parallel import cpu_count, ordered_map
from sqlvision.tables import ImageTable, image_bytes

CALIBRATION_BATCH = 16


@dataclass
class QuantizeReport:
    """Accuracy and speed of the int8 graph next to its float parent."""

    parent: str
    rows_calibrated: int
    rows_evaluated: int
    accuracy_fp32: float | None
    accuracy_int8: float | None
    images_per_second_fp32: float
    images_per_second_int8: float
    agreement: float  # share of rows where both predict the same class
    registered: ModelBundle | None = None

    @property
    def speedup(self) -> float:
        return self.images_per_second_int8 / max(self.images_per_second_fp32, 1e-9)

    def summary(self) -> str:
        """Lines for the CLI."""
        def acc(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        lines = [f"{self.parent}: calibrated on {self.rows_calibrated} rows, compared on "
                 f"{self.rows_evaluated}",
                 f"  fp32: accuracy {acc(self.accuracy_fp32)}, {self.images_per_second_fp32:.0f} img/s",
                 f"  int8: accuracy {acc(self.accuracy_int8)}, {self.images_per_second_int8:.0f} img/s "
                 f"({self.speedup:.2f}x; same class on {self.agreement:.1%} of rows)"]
        if self.registered is not None:
            lines.append(f"registered {self.registered.ref} (int8)")
        else:
            lines.append("not registered: int8 is not faster than fp32 on this CPU "
                         "(--force registers it anyway)")
        return "\n".join(lines)


def _pixels(backend: Backend, table: ImageTable, spec: Any, where: str | None,
            limit: int) -> tuple[np.ndarray, list[Any]]:
    """Up to ``limit`` decodable rows of ``table`` (by id) as uint8 pixels, with their labels."""
    q = backend.quote_column
    uri = q(table.uri) if table.uri else "NULL"
    label = q(table.label) if table.label else "NULL"
    rows = backend.query(
        f"SELECT {q(table.image)}, {uri}, {label} FROM {backend.quote(table.name)} "
        f"WHERE {where or '1 = 1'} ORDER BY {q(table.id)} LIMIT {int(limit)}")
    data, uris, labels = (c.to_pylist() for c in rows.columns)

    def decode(item: tuple[Any, Any]) -> np.ndarray | None:
        try:
            return spec(image_bytes(*item))
        except SqlvisionError:
            return None

    decoded = list(ordered_map(lambda chunk: [decode(x) for x in chunk],
                               [list(zip(data[i:i + 32], uris[i:i + 32], strict=True))
                                for i in range(0, len(data), 32)], workers=cpu_count()))
    flat = [p for chunk in decoded for p in chunk]
    keep = [i for i, p in enumerate(flat) if p is not None]
    if not keep:
        raise SqlvisionError(f"no decodable rows in {table.name}"
                             + (f" matching {where!r}" if where else ""), "check the table and --where")
    return np.stack([p for p in flat if p is not None]), [table.label_of(labels[i]) for i in keep]


class _Calibration:
    """ONNX Runtime's calibration reader over normalized batches of real rows."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self.items: Iterator[dict[str, np.ndarray]] = iter({input_name: b} for b in batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize_onnx(onnx_bytes: bytes, calibration: list[np.ndarray]) -> bytes:
    """The int8 (QDQ, per-channel weights) graph of ``onnx_bytes``, calibrated on the
    normalized float32 ``calibration`` batches."""
    require("onnxruntime.quantization", "train")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load_model_from_string(onnx_bytes).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, out = (Path(tmp) / n for n in ("m.onnx", "prep.onnx", "q.onnx"))
        source.write_bytes(onnx_bytes)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(out), _Calibration(calibration, input_name),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False})
        except Exception as exc:
            raise SqlvisionError(f"ONNX Runtime cannot quantize this graph: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                 "quantize a model sqlvision trained or registered") from exc
        return out.read_bytes()


def throughput(classifier: OnnxClassifier, pixels: np.ndarray, repeat: int = 2) -> float:
    """Images/s of scoring ``pixels`` in CPU batches from one thread per session caller (as
    ``predict`` does), best of ``repeat``."""
    batches = [pixels[i:i + CPU_BATCH] for i in range(0, len(pixels), CPU_BATCH)]
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        list(ordered_map(lambda group: [classifier.predict_proba(b) for b in group],
                         [batches[i::classifier.callers] for i in range(classifier.callers)],
                         workers=classifier.callers))
        best = max(best, len(pixels) / (time.perf_counter() - start))
    return best


def quantize_model(backend: Backend, model: str, table: ImageTable, *,
                   where: str | None = None, eval_where: str | None = None,
                   calibration_rows: int = 256, eval_rows: int = 1000,
                   force: bool = False) -> QuantizeReport:
    """Quantize ``model`` (``name[:version]``) calibrated on rows of ``table`` matching
    ``where``; compare with it on rows matching ``eval_where``; register if faster."""
    name, version = registry.parse_ref(model)
    parent = registry.load(backend, name, version)
    if parent.config.get("quantized"):
        raise SqlvisionError(f"{parent.ref} is already quantized", "quantize its float parent")
    calib_pixels, _ = _pixels(backend, table, parent.spec, where, calibration_rows)
    batches = [parent.spec.normalize(calib_pixels[i:i + CALIBRATION_BATCH])
               for i in range(0, len(calib_pixels), CALIBRATION_BATCH)]
    int8_onnx = quantize_onnx(parent.onnx, batches)
    quantized = ModelBundle(
        name=parent.name, architecture=parent.architecture, classes=list(parent.classes),
        spec=parent.spec, onnx=int8_onnx, weights=None,
        config={**parent.config, "quantized": "int8", "quantized_from": parent.ref},
        lineage={**parent.lineage, "quantized_from": parent.ref,
                 "calibration": {"table": table.name, "where": where, "rows": len(calib_pixels)}})
    eval_pixels, labels = _pixels(backend, table, parent.spec, eval_where, eval_rows)
    fp32 = OnnxClassifier(parent, threads=1)
    int8 = OnnxClassifier(quantized, threads=1)
    p32, p8 = fp32.predict_proba(eval_pixels), int8.predict_proba(eval_pixels)
    known = [i for i, lab in enumerate(labels) if lab is not None and str(lab) in parent.classes]

    def accuracy(proba: np.ndarray) -> float | None:
        if not known:
            return None
        predicted = [parent.classes[j] for j in proba.argmax(axis=1)]
        return float(np.mean([predicted[i] == str(labels[i]) for i in known]))

    speed32, speed8 = throughput(fp32, eval_pixels), throughput(int8, eval_pixels)
    report = QuantizeReport(parent.ref, len(calib_pixels), len(eval_pixels), accuracy(p32),
                            accuracy(p8), speed32, speed8,
                            float(np.mean(p32.argmax(1) == p8.argmax(1))))
    if report.speedup > 1.0 or force:
        quantized.metrics = {
            **{k: v for k, v in parent.metrics.items() if k != "onnx_max_abs_diff"},
            "accuracy_fp32": report.accuracy_fp32, "accuracy_int8": report.accuracy_int8,
            "agreement_with_fp32": report.agreement, "speedup_vs_fp32": round(report.speedup, 3),
            "eval_rows": report.rows_evaluated, "eval_where": eval_where}
        report.registered = registry.save(backend, quantized)
    return report
