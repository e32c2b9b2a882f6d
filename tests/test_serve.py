"""The prediction service's API on every engine: predict in every input form (answers equal the
model's own), the read endpoints and their filters, tokens, problem details and caps, the
relabel write path with its audit row, dynamic batching and a new version picked up live."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import sqlvision as sv
from tests.conftest import BACKEND_PARAMS, fresh_database, image_bytes

pytest.importorskip("fastapi", reason='needs the serve extra: pip install "sqlvision[serve]"')
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from sqlvision.serve import ServeConfig, create_app  # noqa: E402
from sqlvision.serve.batching import Batcher  # noqa: E402
from sqlvision.serve.problems import Problem  # noqa: E402

CLASSES = ("boot", "coat", "hat")
TOKEN = "alice:correct-horse-battery"
SECRET = TOKEN.split(":", 1)[1]
AUTH = {"Authorization": f"Bearer {SECRET}"}


class Server:
    """uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def write_images(root: Path) -> Path:
    """Three classes in train/validation/test folders of small JPEGs."""
    seed = 0
    for split, n in (("train", 8), ("validation", 3), ("test", 3)):
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{label}{i}.jpg").write_bytes(image_bytes("JPEG", (32, 24), seed=seed))
                seed += 1
    return root


@pytest.fixture(scope="session")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier trained once (DuckDB), as a bundle file every engine imports."""
    folder = tmp_path_factory.mktemp("serve-model")
    images = write_images(folder / "images")
    with sv.connect(f"duckdb:///{folder / 'train.duckdb'}") as db:
        db.ingest("clothes", images, progress=False)
        result = db.train("tiny", "clothes", epochs=1, arch="sv_cnn_small", batch_size=16, workers=1,
                          checkpoint_dir=folder / "ck", progress=False, log=lambda _: None)
        return result.bundle.write(folder / "tiny.svmodel")


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           bundle_file: Path) -> Iterator[str]:
    """A database of each engine with images, model ``tiny`` v1, its predictions and an
    evaluation: the service's URL."""
    folder = tmp_path_factory.mktemp(f"serve-{request.param}")
    with fresh_database(request.param, folder) as url:
        fill(url, folder, bundle_file)
        yield url


def fill(url: str, folder: Path, bundle_file: Path | None) -> None:
    """Table ``clothes``, model ``tiny`` (imported from ``bundle_file``, else trained here, so
    it has training curves), its predictions and an evaluation."""
    with sv.connect(url) as db:
        db.ingest("clothes", write_images(folder / "images"), progress=False)
        if bundle_file is not None:
            db.import_model("tiny", bundle_file)
        else:
            db.train("tiny", "clothes", epochs=2, arch="sv_cnn_small", batch_size=4, workers=1,
                     checkpoint_dir=folder / "ck", progress=False, log=lambda _: None)
        db.predict("tiny", "clothes", progress=False, log=lambda _: None)
        db.evaluate("tiny", "clothes", progress=False)


def client(url: str, **settings: Any) -> TestClient:
    settings.setdefault("tokens", {"alice": SECRET})
    return TestClient(create_app(ServeConfig(db=url, **settings)))


def jpeg(seed: int = 99, size: tuple[int, int] = (32, 24)) -> bytes:
    return image_bytes("JPEG", size, seed=seed)


def test_predict_takes_uploads_raw_bytes_and_base64(served: str, bundle_file: Path) -> None:
    from sqlvision.models.bundle import ModelBundle
    from sqlvision.models.runtime import OnnxClassifier

    images = [jpeg(1), jpeg(2), jpeg(3)]
    expected = OnnxClassifier(ModelBundle.read(bundle_file)).predict_bytes(images)
    with client(served) as c:
        one = c.post("/v1/models/tiny/predict", files={"image": ("a.jpg", images[0], "image/jpeg")},
                     headers=AUTH)
        assert one.status_code == 200, one.text
        body = one.json()
        assert (body["model"], body["version"], body["ref"]) == ("tiny", 1, "tiny:1")
        assert body["preprocessing"]["height"] == 24 and body["preprocessing"]["mode"] == "RGB"
        assert body["label"] == CLASSES[int(expected[0].argmax())]
        assert body["confidence"] == pytest.approx(expected[0].max(), abs=1e-6)
        assert [e["label"] for e in body["top_k"]] == [CLASSES[i] for i in np.argsort(-expected[0])]

        many = c.post("/v1/models/tiny:1/predict?top_k=2",
                      files=[("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)],
                      headers=AUTH).json()["predictions"]
        raw = c.post("/v1/models/tiny/predict", content=images[1],
                     headers={**AUTH, "Content-Type": "image/jpeg"}).json()
        b64 = c.post("/v1/models/tiny/predict", headers=AUTH, json={
            "images": [base64.b64encode(d).decode() for d in images], "top_k": 3, "min_prob": 0.3}).json()
    assert [len(p["top_k"]) for p in many] == [2, 2, 2]
    for i, p in enumerate(many):
        assert p["confidence"] == pytest.approx(expected[i].max(), abs=1e-6)
    assert raw["confidence"] == pytest.approx(expected[1].max(), abs=1e-6)
    for p, probs in zip(b64["predictions"], expected, strict=True):
        assert [e["label"] for e in p["top_k"]] == [CLASSES[i] for i in np.argsort(-probs) if probs[i] >= 0.3]


def test_read_endpoints_and_filters(served: str) -> None:
    with client(served) as c:
        def get(path: str, **params: Any) -> Any:
            response = c.get(path, params=params, headers=AUTH)
            assert response.status_code == 200, response.text
            return response.json()

        assert get("/v1/tables") == [{"name": "clothes", "rows": 42, "images": True}]
        info = get("/v1/tables/clothes")
        assert info["labels"] == list(CLASSES) and info["splits"] == ["train", "validation", "test"]
        assert info["counts"][0] == {"label": "boot", "train": 8, "validation": 3, "test": 3, "total": 14}

        page = get("/v1/tables/clothes/images", label="coat", split="test", model="tiny")
        assert page["total"] == 3 and page["model"] == "tiny:1"
        assert {(r["label"], r["split"]) for r in page["items"]} == {("coat", "test")}
        assert all(r["predicted"] in CLASSES and 0 < r["confidence"] <= 1 for r in page["items"])
        paged = [get("/v1/tables/clothes/images", limit=10, offset=o)["items"] for o in (0, 10, 40)]
        assert [len(p) for p in paged] == [10, 10, 2] and paged[1][0]["id"] == paged[0][-1]["id"] + 1
        ordered = get("/v1/tables/clothes/images", model="tiny", order="-confidence", limit=500)["items"]
        confidences = [r["confidence"] for r in ordered]
        assert confidences == sorted(confidences, reverse=True)
        low, high = sorted(confidences)[10], sorted(confidences)[30]
        ranged = get("/v1/tables/clothes/images", model="tiny", min_confidence=low,
                     max_confidence=high, limit=500)
        assert ranged["total"] == sum(low <= x <= high for x in confidences)
        wrong = get("/v1/tables/clothes/images", model="tiny", misclassified="true", limit=500)
        assert wrong["total"] == sum(r["label"] != r["predicted"] for r in ordered)
        assert all(r["label"] != r["predicted"] for r in wrong["items"])
        first = ordered[0]
        by_prediction = get("/v1/tables/clothes/images", model="tiny", predicted=first["predicted"],
                            limit=500)
        assert by_prediction["total"] == sum(r["predicted"] == first["predicted"] for r in ordered)

        detail = get(f"/v1/tables/clothes/images/{first['id']}")
        assert detail["label"] == first["label"] and detail["row"]["width"] == 32
        assert [(p["model"], p["model_version"]) for p in detail["predictions"]] == [("tiny", 1)]
        assert detail["predictions"][0]["top_k"][0]["label"] == first["predicted"]
        image = c.get(f"/v1/tables/clothes/images/{first['id']}/image", headers=AUTH)
        assert image.headers["content-type"] == "image/jpeg"
        # the service's own connection: an embedded DuckDB file is open in one place at a time
        stored = c.app.state.database.run(  # type: ignore[attr-defined]
            lambda db: db.sql("SELECT data FROM clothes WHERE id = ?", [first["id"]]).scalar())
        assert image.content == bytes(stored)
        small = c.get(f"/v1/tables/clothes/images/{first['id']}/thumbnail?size=16", headers=AUTH)
        assert Image.open(io.BytesIO(small.content)).size == (16, 12)

        assert [(m["name"], m["versions"]) for m in get("/v1/models")] == [("tiny", [1])]
        model = get("/v1/models/tiny")
        assert model["classes"] == list(CLASSES) and model["schema"]["inputs"][0]["shape"][1:] == [3, 24, 32]
        assert model["lineage"]["source_table"] == "clothes" and model["predicted_tables"] == ["clothes"]
        evaluations = get("/v1/models/tiny/evaluations")
        assert evaluations[0]["row_count"] == 9 and len(evaluations[0]["per_class"]) == 3
        matrix = get("/v1/models/tiny/confusion", table="clothes", split="test")
        assert matrix["rows"] == 9 and sum(map(sum, matrix["matrix"])) == 9
        assert matrix["accuracy"] == pytest.approx(evaluations[0]["accuracy"])
        mistakes = get("/v1/models/tiny/mistakes", table="clothes", limit=500)["items"]
        assert len(mistakes) == wrong["total"]
        assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes),
                                                             reverse=True)
        assert c.get("/readyz").json()["status"] == "ready"


def test_tokens_caps_and_problem_details(served: str) -> None:
    with client(served, max_upload_bytes=50_000, max_pixels=10_000) as c:
        assert c.get("/healthz").json()["token_required"] is True
        refused = c.get("/v1/tables")
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["title"] == "Unauthorized" and refused.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/tables", headers={"Authorization": "Bearer wrong-token-x"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/tables", headers={"Cookie": f"sv_token={SECRET}"}).status_code == 200

        def problem(response: Any, status: int, words: str) -> None:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["status"] == status and words in body["detail"], body
            assert SECRET not in response.text

        post = c.post
        problem(post("/v1/models/tiny/predict", content=b"x" * 60_000, headers=AUTH), 413, "larger")
        problem(post("/v1/models/tiny/predict", content=jpeg(size=(200, 100)), headers=AUTH), 413,
                "20,000 pixels")
        problem(post("/v1/models/tiny/predict", content=b"not an image", headers=AUTH), 422,
                "not an image")
        problem(post("/v1/models/tiny/predict", content=jpeg()[:200], headers=AUTH), 422, "image 0")
        problem(post("/v1/models/tiny/predict", content=b"", headers=AUTH), 400, "no image")
        problem(post("/v1/models/tiny/predict", json={"image": "%%%"}, headers=AUTH), 400, "base64")
        problem(post("/v1/models/nope/predict", content=jpeg(), headers=AUTH), 404, "not found")
        problem(post("/v1/models/-x%20y/predict", content=jpeg(), headers=AUTH), 400, "bad model name")
        problem(c.get("/v1/tables/sv_models", headers=AUTH), 404, "not found")
        problem(c.get("/v1/tables/clothes/images/123456", headers=AUTH), 404, "no row")
        problem(c.get("/v1/tables/clothes/images?misclassified=true", headers=AUTH), 422, "needs a model")
        problem(c.get("/v1/tables/clothes/images?label=a%00b", headers=AUTH), 422, "control characters")
        problem(c.put("/v1/tables/clothes/images/1/label", json={"label": "coat"},
                      headers={"Cookie": f"sv_token={SECRET}"}), 401, "writes need a token")
    with client(served, tokens={}) as open_server:
        assert open_server.get("/v1/tables").status_code == 200
        problem(open_server.put("/v1/tables/clothes/images/1/label", json={"label": "coat"}), 403,
                "writes are disabled")


def test_relabel_writes_the_table_and_the_audit(served: str) -> None:
    with client(served) as c:
        queue = c.get("/v1/tables/clothes/review?model=tiny&limit=500", headers=AUTH).json()
        items = queue["items"]
        flags = [r["misclassified"] for r in items]
        assert flags == sorted(flags, reverse=True) and queue["remaining"] == 42
        wrong = [r["confidence"] for r in items if r["misclassified"]]
        assert wrong == sorted(wrong)
        target = items[0]
        new = target["predicted"] if target["misclassified"] else next(x for x in CLASSES
                                                                       if x != target["label"])
        answer = c.put(f"/v1/tables/clothes/images/{target['id']}/label", json={"label": new},
                       headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["old_label"], answer.json()["label"]) == (target["label"], new)
        after = c.get("/v1/tables/clothes/review?model=tiny&limit=500", headers=AUTH).json()
        assert after["remaining"] == 41 and target["id"] not in [r["id"] for r in after["items"]]
        history = c.get(f"/v1/tables/clothes/images/{target['id']}", headers=AUTH).json()
        assert history["label"] == new and history["label_history"][0]["changed_by"] == "alice"
    with sv.connect(served) as db:
        assert db.sql("SELECT label FROM clothes WHERE id = ?", [target["id"]]).scalar() == new
        audit = db.sql("SELECT source_table, image_id, old_label, new_label, changed_by, changed_at "
                       "FROM sv_label_audit").fetchall()
    assert [a[:5] for a in audit] == [("clothes", target["id"], target["label"], new, "alice")]
    assert audit[0][5] is not None


async def _concurrently(app: Any, requests: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sqlvision") as c:
        return await asyncio.gather(*(c.request(method, path, headers=AUTH, **kw)
                                      for method, path, kw in requests))


def test_concurrent_requests_are_batched_and_a_new_version_is_picked_up(served: str,
                                                                         bundle_file: Path) -> None:
    app = create_app(ServeConfig(db=served, tokens={"alice": SECRET}, max_wait_ms=20,
                                 refresh_seconds=0, loaded_versions=1))
    predict = ("POST", "/v1/models/tiny/predict", {"content": jpeg(), "headers": {}})

    async def scenario() -> tuple[list[Any], list[Any], str]:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://sqlvision") as c:
            def send() -> Any:
                return c.post(predict[1], content=predict[2]["content"], headers=AUTH)
            first = await asyncio.gather(*(send() for _ in range(24)))
            # a new version registers while requests are in flight: none is dropped
            during = [asyncio.ensure_future(send()) for _ in range(16)]
            await app.state.database.call(lambda db: db.import_model("tiny", bundle_file))
            during += [asyncio.ensure_future(send()) for _ in range(16)]
            second = await asyncio.gather(*during)
            # one version loaded at a time: each retires the other, and no request is lost
            alternating = await asyncio.gather(*(
                c.post(f"/v1/models/tiny:{1 + i % 2}/predict", content=jpeg(), headers=AUTH)
                for i in range(20)))
            assert [r.json()["version"] for r in alternating] == [1 + i % 2 for i in range(20)]
            metrics = (await c.get("/metrics", headers=AUTH)).text
            return first, second, metrics

    first, second, metrics = asyncio.run(scenario())
    assert [r.status_code for r in first + second] == [200] * 56
    assert {r.json()["version"] for r in first} == {1}
    assert second[-1].json()["version"] == 2
    sizes = [line for line in metrics.splitlines() if line.startswith("sqlvision_batch_size_count")]
    count = float(sizes[0].split()[-1])
    assert count < 76  # fewer inference calls than requests: they were batched
    assert 'sqlvision_http_requests_total{method="POST",route="/v1/models/{ref}/predict",status="200"} 76.0' \
        in metrics
    assert "sqlvision_http_request_seconds_bucket" in metrics


def test_batcher_gathers_splits_and_bounds_its_queue() -> None:
    calls: list[int] = []

    def score(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1)[:, :2].astype(float)

    async def scenario(max_batch: int, max_queue: int = 100) -> list[np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(score, pool, max_batch=max_batch, max_wait=0.05, max_queue=max_queue)
            inputs = [np.full((1 + i % 2, 1, 2, 2), i, np.uint8) for i in range(10)]
            out = await asyncio.gather(*(batcher.submit(x) for x in inputs))
            await batcher.close()
            return out

    out = asyncio.run(scenario(8))
    assert [o[:, 0].tolist() for o in out] == [[i] * (1 + i % 2) for i in range(10)]
    assert sum(calls) == 15 and len(calls) < 10 and max(calls) <= 9
    calls.clear()
    asyncio.run(scenario(1))
    assert calls == [1 + i % 2 for i in range(10)]  # batching off: each request alone
    with pytest.raises(Problem) as full:
        asyncio.run(scenario(8, max_queue=2))
    assert full.value.status == 503

    async def lone_request() -> float:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(score, pool, max_batch=8, max_wait=30.0)
            started = time.perf_counter()
            await batcher.submit(np.zeros((1, 1, 2, 2), np.uint8))
            elapsed = time.perf_counter() - started
            await batcher.close()
            return elapsed

    assert asyncio.run(lone_request()) < 5  # an idle engine does not wait for company


def test_serve_verb_refuses_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlvision.cli import main

    assert main(["serve", "--db", f"duckdb:///{tmp_path / 'missing.duckdb'}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--token" in capsys.readouterr().out


def test_tokens_come_from_options_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlvision.errors import SqlvisionError
    from sqlvision.serve.config import parse_tokens

    monkeypatch.setenv("SQLVISION_TOKEN", "bob:another-secret, plain-secret-123")
    assert parse_tokens([TOKEN]) == {"alice": SECRET, "bob": "another-secret", "token": "plain-secret-123"}
    with pytest.raises(SqlvisionError, match="shorter than 8"):
        parse_tokens(["x:short"], env=False)
    assert ServeConfig().batch_limit(4) == 4 and ServeConfig(max_batch=16).batch_limit(4) == 16
    assert ServeConfig(batching=False).batch_limit(64) == 1


def test_openapi_and_its_docs_page_need_no_network(tmp_path: Path) -> None:
    with client(f"duckdb:///{tmp_path / 'empty.duckdb'}", tokens={}) as c:
        spec = c.get("/openapi.json").json()
        assert "/v1/models/{ref}/predict" in spec["paths"] and "/healthz" in spec["paths"]
        page = c.get("/docs").text
        assert "/docs-static/swagger-ui-bundle.js" in page and "cdn" not in page
        assert c.get("/docs-static/swagger-ui-bundle.js").status_code == 200
        assert c.get("/v1/tables").json() == [] and c.get("/v1/models").json() == []
        assert "sqlvision" in c.get("/").text and c.get("/static/app.js").status_code == 200


def test_thumbnail_cache_is_bounded_by_bytes() -> None:
    from sqlvision.serve.thumbnails import ByteCache

    cache = ByteCache(10)
    for key in "abc":
        cache.put(key, b"xxxx")
    assert cache.get("a") is None and cache.get("b") == b"xxxx" and cache.size == 8
    cache.put("d", b"yyyy")  # "c" is now the least recently used
    assert cache.get("c") is None and cache.get("b") == b"xxxx" and cache.size == 8


def test_problem_details_mask_the_database_password() -> None:
    from fastapi import FastAPI

    from sqlvision.errors import SqlvisionError
    from sqlvision.serve import problems

    url = "postgresql://me:hunter2-secret@db.example:5432/images?sslpassword=pem-secret-99"
    app = FastAPI()
    problems.install(app, url)

    @app.get("/fail")
    async def fail() -> None:
        raise SqlvisionError(f"cannot reach {url} (password hunter2-secret refused)",
                             "check the password hunter2-secret")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError(f"driver says: {url}")

    with TestClient(app, raise_server_exceptions=False) as c:
        failed, crashed = c.get("/fail"), c.get("/crash")
    assert failed.status_code == 400 and "me:***@db.example" in failed.json()["detail"]
    assert crashed.status_code == 500 and crashed.json()["detail"] == "internal error"
    for response in (failed, crashed):
        assert "hunter2" not in response.text and "pem-secret" not in response.text


def test_the_serve_verb_answers_a_curl_style_upload(tmp_path: Path, bundle_file: Path) -> None:
    import socket
    import subprocess
    import sys

    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    with sv.connect(url) as db:
        db.import_model("shoes", bundle_file)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "sqlvision.cli", "serve", "--db", url,
                               "--port", str(port), "--token", TOKEN],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        answer = httpx.post(base + "/v1/models/shoes/predict", headers=AUTH,
                            files={"image": ("shoe.jpg", jpeg(), "image/jpeg")}).json()
        assert answer["ref"] == "shoes:1" and answer["label"] in CLASSES
        assert httpx.get(base + "/v1/models").status_code == 401
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0].decode()
    assert f"127.0.0.1:{port}" in log and SECRET not in log
