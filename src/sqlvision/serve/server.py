"""Running the app with uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

from sqlvision.deps import require
from sqlvision.serve.config import ServeConfig


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``config`` at ``host:port`` until interrupted."""
    uvicorn = require("uvicorn", "serve")
    from sqlvision.serve.app import create_app

    uvicorn.run(create_app(config), host=host, port=port, log_level="info",
                server_header=False, proxy_headers=False)
