"""Running a bundle: ONNX Runtime on the CPU by default (no torch needed), or PyTorch (CUDA when
present). Preprocessing always comes from the bundle's spec."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sqlvision.deps import require
from sqlvision.errors import SqlvisionError
from sqlvision.models.bundle import ModelBundle, weights_from_bytes
from sqlvision.parallel import cpu_count

ENGINES = ("onnxruntime", "torch")
# Images per inference call. On a CPU small batches are fastest: a batch's activations stay in
# the core's cache (mobilenetv3, ONNX Runtime, one single-threaded session per core: ~575
# images/s at 4, ~370 at 64); a GPU wants large ones.
CPU_BATCH = 4
GPU_BATCH = 64


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """A bundle's ONNX graph in an ONNX Runtime session, built once and reused.

    ``threads``: the session's own threads (default: all cores). With fewer, the session is
    meant to be called from ``callers`` threads at once (ONNX Runtime sessions are thread-safe).
    """

    def __init__(self, bundle: ModelBundle, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        ort = require("onnxruntime", "train")
        self.bundle = bundle
        self.spec = bundle.spec
        self.classes = list(bundle.classes)
        options = ort.SessionOptions()
        threads = threads or cpu_count()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decode threads share the cores: idle inference threads should sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available]
        self.session = ort.InferenceSession(bundle.onnx, options,
                                            providers=chosen or ["CPUExecutionProvider"])
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        self.batch_size = CPU_BATCH if on_cpu else GPU_BATCH
        self.callers = max(1, cpu_count() // threads) if on_cpu else 1
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def has_features(self) -> bool:
        """Whether the graph also outputs penultimate-layer features (for embeddings)."""
        return len(self.output_names) > 1

    def run(self, batch: np.ndarray, features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits, features)`` for a normalized float32 ``N x C x H x W`` batch."""
        if features and not self.has_features:
            raise SqlvisionError(f"model {self.bundle.ref} has no feature output",
                                 "embeddings need a model trained (or re-exported) by sqlvision")
        names = self.output_names[:2] if features else self.output_names[:1]
        out = self.session.run(names, {self.input_name: batch})
        return out[0], (out[1] if features else None)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw scores for a normalized float32 batch."""
        return self.run(batch)[0]

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 ``N x C x H x W`` pixels from ``spec(bytes)``."""
        return softmax(self.logits(self.spec.normalize(pixels)).astype(np.float64))

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Penultimate-layer vectors (float32) for uint8 pixels."""
        features = self.run(self.spec.normalize(pixels), features=True)[1]
        assert features is not None
        return features.astype(np.float32)

    def predict_bytes(self, images: Sequence[bytes]) -> np.ndarray:
        """Class probabilities for encoded images (decoded and resized by the spec)."""
        return self.predict_proba(np.stack([self.spec(b) for b in images]))

    def labels(self, probabilities: np.ndarray) -> list[Any]:
        """The most probable class name of each row."""
        return [self.classes[i] for i in probabilities.argmax(axis=1)]


class TorchClassifier(OnnxClassifier):
    """The same interface on the bundle's PyTorch weights: CUDA (mixed precision) when present."""

    def __init__(self, bundle: ModelBundle, device: str | None = None) -> None:
        torch = require("torch", "train")
        from sqlvision.models import architectures
        from sqlvision.models.export import with_features

        if bundle.weights is None:
            raise SqlvisionError(f"model {bundle.ref} has no PyTorch weights (imported from ONNX)",
                                 "use --engine onnxruntime")
        self.bundle, self.spec, self.classes = bundle, bundle.spec, list(bundle.classes)
        model = architectures.create(bundle.architecture, len(bundle.classes), bundle.spec.channels)
        model.load_state_dict(weights_from_bytes(bundle.weights))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_count())
        self.model = with_features(model).to(self.device).eval()
        self.batch_size = GPU_BATCH  # on a CPU too: torch's threads split each batch
        self.callers = 1  # torch's thread count is process-wide: one caller, all cores
        self.output_names = ["logits", "features"]

    def run(self, batch: np.ndarray, features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type,
                                                    enabled=self.device.type == "cuda"):
            logits, feats = self.model(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy(), feats.float().cpu().numpy() if features else None


def load_classifier(bundle: ModelBundle, engine: str = "onnxruntime",
                    device: str | None = None) -> OnnxClassifier:
    """The scorer for ``bundle`` on ``engine`` (``onnxruntime`` or ``torch``), built for bulk
    work: under ONNX Runtime on a CPU, a single-threaded session called from a thread per core
    (see :func:`sqlvision.predict.stream.score_rows`)."""
    if engine == "onnxruntime":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
        return OnnxClassifier(bundle, providers=providers, threads=1)
    if engine == "torch":
        return TorchClassifier(bundle, device)
    raise SqlvisionError(f"unknown engine {engine!r}", f"use one of {', '.join(ENGINES)}")
