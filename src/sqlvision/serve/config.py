"""The service's settings in one place: the CLI fills them, tests and the benchmark build them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlvision.errors import SqlvisionError

TOKEN_ENV = "SQLVISION_TOKEN"
_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ServeConfig:
    """How ``sqlvision serve`` behaves.

    ``tokens`` maps a token's name (written to the label audit) to its secret; with none, reads
    are open and writes refused. ``max_batch``/``max_wait_ms``: dynamic batching gathers
    concurrent predict requests for one model until the batch holds that many images (default:
    the engine's best batch, 4 on a CPU, where small batches stay in a core's cache, 64 on a
    GPU) or the first one has waited that long (``batching=False``: each request alone). A model named
    without a version is looked up for a newer one every ``refresh_seconds``.
    """

    db: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = 25_000_000
    max_images: int = 64
    max_batch: int | None = None
    max_wait_ms: float = 4.0
    batching: bool = True
    refresh_seconds: float = 1.0
    max_queue: int = 512
    loaded_versions: int = 4
    thumbnail_cache_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        for name, value in (("max_upload_bytes", self.max_upload_bytes), ("max_images", self.max_images),
                            ("max_batch", self.max_batch or 1), ("max_queue", self.max_queue),
                            ("loaded_versions", self.loaded_versions)):
            if value < 1:
                raise SqlvisionError(f"{name} must be at least 1 (got {value})", "fix the option")
        if self.max_pixels < 0 or self.max_wait_ms < 0 or self.refresh_seconds < 0:
            raise SqlvisionError("max_pixels, max_wait_ms and refresh_seconds cannot be negative",
                                 "fix the option")

    def batch_limit(self, engine_batch: int) -> int:
        """Images per inference call: ``max_batch`` (else the engine's ``engine_batch``), or 1
        with batching off."""
        return (self.max_batch or engine_batch) if self.batching else 1


def parse_tokens(values: Iterable[str] = (), *, env: bool = True) -> dict[str, str]:
    """Tokens from ``--token`` values and ``$SQLVISION_TOKEN`` (comma-separated): each
    ``NAME:SECRET``, or a bare ``SECRET`` named ``token``. Secrets are never printed."""
    items = [v for v in values if v]
    if env:
        items += [v.strip() for v in os.environ.get(TOKEN_ENV, "").split(",") if v.strip()]
    tokens: dict[str, str] = {}
    for item in items:
        name, sep, secret = item.partition(":")
        if not (sep and _TOKEN_NAME.fullmatch(name) and secret):
            name, secret = "token", item
        if len(secret) < 8:
            raise SqlvisionError(f"the token named {name!r} is shorter than 8 characters",
                                 "use a longer secret, e.g. python -c 'import secrets; "
                                 "print(secrets.token_urlsafe())'")
        tokens[name] = secret
    return tokens
