"""Checkpoints of a run in its folder: ``last.pt`` (everything needed to resume mid-epoch) and
``best.pt`` (the best epoch's weights), each written atomically so a kill leaves the previous one
whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlvision.errors import SqlvisionError

FORMAT = 1


class Checkpoints:
    """The checkpoint folder of one model's runs (default ``./sqlvision-runs/NAME``)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder

    def save(self, state: dict[str, Any], name: str = "last.pt") -> Path:
        """Write ``state`` atomically."""
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / name
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def resume_state(self, fingerprint: str, arch: str) -> dict[str, Any]:
        """The last checkpoint, which must belong to a run on the same data and architecture."""
        import torch

        path = self.dir / "last.pt"
        if not path.exists():
            raise SqlvisionError(f"no checkpoint to resume in {self.dir}",
                                 "drop --resume to start a new run (or pass --checkpoint-dir)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint or state.get("arch") != arch:
            raise SqlvisionError(f"the checkpoint in {self.dir} is for another run (different data, "
                                 "selection or architecture)", "drop --resume or change --checkpoint-dir")
        return state

    def best_weights(self) -> dict[str, Any] | None:
        """The best epoch's weights saved by this run, if any."""
        import torch

        path = self.dir / "best.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)["model"]
