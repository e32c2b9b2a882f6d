"""Progress bars for long work: on a terminal by default, silent in pipes and CI logs."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "img",
                 enabled: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar; ``enabled=None`` shows it only when stderr is a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                dynamic_ncols=True, leave=False, **kwargs)
