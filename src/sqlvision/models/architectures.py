"""Architectures by name: small built-in CNNs for small and grayscale images, and every timm
model. One factory, :func:`create`, as timm's ``create_model``; :func:`list_architectures` and
close-match suggestions for typos.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from sqlvision.deps import require
from sqlvision.errors import SqlvisionError

DEFAULT_ARCH = "sv_cnn"
_BUILTIN: dict[str, tuple[Callable[..., Any], str]] = {}


def register(name: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a model factory ``f(num_classes, in_chans, drop_rate)`` available by name."""
    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        _BUILTIN[name] = (factory, description)
        return factory
    return wrap


def _conv_net(widths: tuple[int, ...], num_classes: int, in_chans: int, drop_rate: float) -> Any:
    """VGG-style stages of two 3x3 conv-BN-ReLU, max-pooling between stages, global average pool:
    fast on CPUs, any input size, grayscale or RGB."""
    nn = require("torch.nn", "train")

    layers: list[Any] = []
    cin = in_chans
    for i, width in enumerate(widths):
        if i:
            layers.append(nn.MaxPool2d(2))
        for _ in range(2):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            cin = width
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SequentialClassifier(features, nn.Dropout(drop_rate), nn.Linear(cin, num_classes))


def SequentialClassifier(features: Any, dropout: Any, head: Any) -> Any:
    """``features -> dropout -> head`` with timm's ``forward_features``/``get_classifier`` API, so
    embedding extraction and layer freezing treat built-ins and timm models alike."""
    nn = require("torch.nn", "train")

    class _Classifier(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.features, self.dropout, self.head = features, dropout, head
            self.num_features = head.in_features

        def forward_features(self, x: Any) -> Any:
            return self.features(x)

        def forward_head(self, x: Any, pre_logits: bool = False) -> Any:
            return x if pre_logits else self.head(self.dropout(x))

        def forward(self, x: Any) -> Any:
            return self.forward_head(self.forward_features(x))

        def get_classifier(self) -> Any:
            return self.head

        def reset_classifier(self, num_classes: int) -> None:
            self.head = nn.Linear(self.num_features, num_classes)

    return _Classifier()


@register("sv_cnn_small", "6 conv layers, 16-32-64 channels: fastest, for 28x28 to 64x64 images")
def sv_cnn_small(num_classes: int, in_chans: int, drop_rate: float = 0.2) -> Any:
    return _conv_net((16, 32, 64), num_classes, in_chans, drop_rate)


@register("sv_cnn", "6 conv layers, 32-64-128 channels: the default, for small images")
def sv_cnn(num_classes: int, in_chans: int, drop_rate: float = 0.2) -> Any:
    return _conv_net((32, 64, 128), num_classes, in_chans, drop_rate)


@register("sv_cnn_wide", "8 conv layers, 32-64-128-256 channels: for larger images")
def sv_cnn_wide(num_classes: int, in_chans: int, drop_rate: float = 0.3) -> Any:
    return _conv_net((32, 64, 128, 256), num_classes, in_chans, drop_rate)


def builtin_architectures() -> dict[str, str]:
    """Built-in names and what they are for."""
    return {name: desc for name, (_, desc) in sorted(_BUILTIN.items())}


def list_architectures(pattern: str | None = None) -> list[str]:
    """Every name :func:`create` accepts: the built-ins, then timm's (filtered by ``pattern``)."""
    names = sorted(_BUILTIN)
    try:
        import timm
    except ImportError:
        return names
    return names + list(timm.list_models(pattern or "*"))


def check_architecture(name: str) -> None:
    """Fail with close matches when ``name`` is neither built-in nor a timm model."""
    if name in _BUILTIN:
        return
    timm = require("timm", "train")
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, list_architectures(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "list them with: sqlvision models archs"
    raise SqlvisionError(f"unknown architecture {name!r}", hint)


def create(name: str, num_classes: int, in_chans: int, *, drop_rate: float = 0.0) -> Any:
    """Build ``name`` with a ``num_classes`` head taking ``in_chans`` channels, randomly
    initialised (pretrained weights are loaded by :mod:`sqlvision.models.pretrained`)."""
    check_architecture(name)
    if name in _BUILTIN:
        factory = _BUILTIN[name][0]
        return factory(num_classes, in_chans, drop_rate=drop_rate)
    timm = require("timm", "train")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 drop_rate=drop_rate)
    except (RuntimeError, ValueError) as exc:
        raise SqlvisionError(f"cannot build {name}: {str(exc).splitlines()[0]}",
                             "check the architecture name") from exc
