"""Ready-made ImageNet classifiers: a pretrained network with its 1,000 class names, registered
as a model version like any trained one (BigQuery ML's imported ResNet-50, Dataiku's
"download pre-trained model"), so ``predict_topk('imagenet', data, 5)`` works at once and
``train --from imagenet`` fine-tunes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models import architectures, registry
from sqlvision.models.bundle import ModelBundle
from sqlvision.models.export import bundle_from_torch
from sqlvision.models.pretrained import imagenet_classes, load_pretrained, pretrained_config
from sqlvision.preprocess import PreprocessSpec

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "sample" / "clothing"
DEFAULT_ARCH = "tf_efficientnet_lite0"


def imagenet_spec(arch: str) -> PreprocessSpec:
    """The evaluation preprocessing ``arch``'s ImageNet weights expect (timm's configuration:
    size, crop fraction, interpolation, mean, std)."""
    cfg = pretrained_config(arch)
    if not cfg or cfg.get("num_classes") != 1000:
        raise SqlvisionError(f"{arch} has no ImageNet-1k configuration in timm",
                             f"use an ImageNet architecture such as {DEFAULT_ARCH}")
    _, height, width = cfg["input_size"]
    interpolation = cfg.get("interpolation", "bilinear")
    return PreprocessSpec(height, width, "RGB", "crop", tuple(cfg["mean"]), tuple(cfg["std"]),
                          interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
                          crop_pct=float(cfg.get("crop_pct") or 1.0))


def register_imagenet(backend: Backend, arch: str = DEFAULT_ARCH, name: str = "imagenet", *,
                      pretrained_file: str | None = None) -> ModelBundle:
    """Register ``arch`` with its ImageNet weights and class names as the next version of
    ``name``. The ONNX export is checked against PyTorch on the bundled sample photos."""
    spec = imagenet_spec(arch)
    model = architectures.create(arch, 1000, 3)
    source = load_pretrained(model, arch, pretrained_file)
    photos = sorted(SAMPLE_IMAGES.glob("*/*/*.jpg"))[:8]
    example = np.stack([spec(p.read_bytes()) for p in photos])
    bundle = bundle_from_torch(
        model, name=name, architecture=arch, classes=imagenet_classes(), spec=spec,
        example=example, metrics={"dataset": "ImageNet-1k"},
        config={"arch": arch, "pretrained": True},
        lineage={"weights_source": source.describe(), "classes": "ImageNet-1k (timm's class index)"})
    return registry.save(backend, bundle)
