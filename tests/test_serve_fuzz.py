"""The API fuzzed from its own OpenAPI schema (schemathesis): whatever the inputs, no server
error, on every engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKEND_PARAMS, fresh_database
from tests.test_serve import AUTH, SECRET, Server, bundle_file, fill  # noqa: F401 (a fixture)

pytest.importorskip("fastapi", reason='needs the serve extra: pip install "sqlvision[serve]"')
schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (the test extra)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from sqlvision.serve import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def api_schema(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               bundle_file: Path) -> Iterator[Any]:  # noqa: F811
    """The schema of a live server over a database with images, a model and predictions."""
    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with fresh_database(request.param, folder) as url:
        fill(url, folder, bundle_file)
        app = create_app(ServeConfig(db=url, tokens={"alice": SECRET}, max_upload_bytes=256 * 1024))
        with Server(app) as base:
            yield schemathesis.openapi.from_url(f"{base}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_makes_a_server_error(case: Any) -> None:
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
    # the same case on names that exist, so the fuzzed rest reaches the queries behind them
    known = {"table": "clothes", "ref": "tiny", "model": "tiny", "image_id": 1 + len(repr(case)) % 42}
    if case.path_parameters or any(k in (case.query or {}) for k in known):
        case.path_parameters = {k: known.get(k, v) for k, v in (case.path_parameters or {}).items()}
        if case.query:
            case.query = {k: known.get(k, v) for k, v in case.query.items()}
        case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
