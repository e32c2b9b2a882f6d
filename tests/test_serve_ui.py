"""The web UI in real headless Chromium (Debian's, driven by Playwright): enter the token, open a
table (its stats chart and image grid), filter, open an image, relabel it, work the review
queue by key, open the model's confusion matrix and a cell's images, upload an image and see its
prediction. Screenshots go to ``$SQLVISION_TEST_ARTIFACTS`` (default ``.tmp/ui-screenshots``)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, image_bytes
from tests.test_serve import CLASSES, SECRET, Server, fill

CHROMIUM = Path(os.environ.get("SQLVISION_CHROMIUM", "/usr/bin/chromium"))  # Debian's
pytest.importorskip("fastapi", reason='needs the serve extra: pip install "sqlvision[serve]"')
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (bash scripts/setup-browser.sh)",
                allow_module_level=True)

from sqlvision.serve import ServeConfig, create_app  # noqa: E402

ARTIFACTS = Path(os.environ.get("SQLVISION_TEST_ARTIFACTS", REPO / ".tmp" / "ui-screenshots"))
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A served DuckDB database with images, model ``tiny`` trained there (so it has training
    curves), its predictions and an evaluation."""
    folder = tmp_path_factory.mktemp("serve-ui")
    url = f"duckdb:///{folder / 'ui.duckdb'}"
    fill(url, folder, None)
    app = create_app(ServeConfig(db=url, tokens={"alice": SECRET}))
    with Server(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def page(site: tuple[str, Any]) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
        assert not errors, f"JavaScript errors: {errors}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def label_of(app: Any, image_id: int) -> tuple[str, list[tuple[Any, ...]]]:
    """The row's label and its audit rows, through the service's own connection."""
    def read(db: Any) -> tuple[str, list[tuple[Any, ...]]]:
        label = db.sql("SELECT label FROM clothes WHERE id = ?", [image_id]).scalar()
        audit = db.sql("SELECT old_label, new_label, changed_by FROM sv_label_audit WHERE image_id = ?",
                       [image_id]).fetchall()
        return label, audit
    result: tuple[str, list[tuple[Any, ...]]] = app.state.database.run(read)
    return result


def test_ui_table_filter_image_relabel_review_model_upload(site: tuple[str, Any], page: Any,
                                                           tmp_path: Path) -> None:
    base, app = site
    expect = playwright_api.expect
    expect.set_options(timeout=WAIT_MS)
    page.goto(base + "/")
    expect(page.get_by_test_id("error")).to_contain_text("needs a token")
    page.fill("#token", SECRET)
    page.click("#token-form button")
    expect(page.get_by_test_id("table-card")).to_contain_text("42 rows")

    # a table: the stats chart and the grid; a bar of the chart filters the grid
    page.click("text=clothes")
    expect(page.get_by_test_id("tile")).to_have_count(42)
    expect(page.locator("[data-testid=stats-chart] rect.clickable")).to_have_count(9)
    shot(page, "1-table")
    page.locator("[data-testid=stats-chart] rect[data-label=hat][data-split=test]").click()
    expect(page.get_by_test_id("total")).to_have_text("1–3 of 3")
    expect(page.get_by_test_id("tile")).to_have_count(3)
    assert all("hat" in t and "test" in t for t in page.get_by_test_id("tile").all_inner_texts())

    # the filter form: one label, the least confident first, then misclassified only
    page.goto(base + "/#/table/clothes")
    expect(page.get_by_test_id("total")).to_have_text("1–42 of 42")
    form = page.get_by_test_id("filters")
    form.locator("select[name=label]").select_option("coat")
    form.locator("select[name=order]").select_option("confidence")
    form.locator("button").click()
    expect(page.get_by_test_id("total")).to_have_text("1–14 of 14")
    assert all("coat" in t for t in page.get_by_test_id("tile").all_inner_texts())
    form = page.get_by_test_id("filters")
    form.locator("input[name=misclassified]").check()
    form.locator("button").click()
    expect(page.get_by_test_id("grid")).to_be_visible()
    page.wait_for_function("location.hash.includes('misclassified=true')")
    for tile in page.get_by_test_id("tile").all():
        assert "wrong" in (tile.get_attribute("class") or "")

    # one image: top-k bars, predictions across versions; relabel it
    page.goto(base + "/#/table/clothes?model=tiny")
    expect(page.get_by_test_id("total")).to_have_text("1–42 of 42")
    first = page.get_by_test_id("tile").first
    image_id = int(first.get_attribute("data-id"))
    first.click()
    expect(page.locator("[data-testid=topk] .bar")).to_have_count(3)
    expect(page.locator("[data-testid=history] tr")).to_have_count(2)
    shot(page, "2-image")
    old = page.get_by_test_id("label").inner_text()
    new = next(c for c in CLASSES if c != old)
    page.get_by_test_id("relabel").locator("select").select_option(new)
    page.get_by_test_id("relabel").locator("button").click()
    expect(page.get_by_test_id("label")).to_have_text(new)
    expect(page.get_by_test_id("label-history")).to_contain_text("alice")
    assert label_of(app, image_id) == (new, [(old, new, "alice")])

    # the review queue: a key relabels the first row and the next one comes up
    page.goto(base + "/#/review/clothes?model=tiny")
    item = page.get_by_test_id("review-item")
    expect(item).to_be_visible()
    reviewed = int(item.get_attribute("data-id"))
    assert reviewed != image_id  # reviewed rows leave the queue
    before = label_of(app, reviewed)[0]
    shot(page, "3-review")
    page.keyboard.press("1")
    expect(page.get_by_test_id("review-item")).not_to_have_attribute("data-id", str(reviewed))
    assert label_of(app, reviewed) == (CLASSES[0], [(before, CLASSES[0], "alice")])

    # the model page: curves, the evaluation, the confusion matrix whose cells open their images
    page.goto(base + "/#/model/tiny")
    expect(page.get_by_test_id("confusion")).to_be_visible()
    expect(page.get_by_test_id("curves")).to_be_visible()
    expect(page.get_by_test_id("evaluation")).to_contain_text("accuracy")
    assert page.locator("main p").first.inner_text().startswith("versions: 1 · classes: boot, coat, hat")
    shot(page, "4-model")
    cell = page.get_by_test_id("cell").first
    count = int(cell.inner_text())
    cell.click()
    expect(page.get_by_test_id("tile")).to_have_count(count)

    # upload an image and see its prediction (the API's answer for the same bytes)
    picture = tmp_path / "upload.jpg"
    picture.write_bytes(image_bytes("JPEG", (32, 24), seed=4242))
    page.goto(base + "/#/upload")
    page.get_by_test_id("file").set_input_files(str(picture))
    expect(page.get_by_test_id("predicted-label")).not_to_be_empty()
    expect(page.locator("[data-testid=upload-result] .bar")).to_have_count(3)
    shot(page, "5-upload")
    answer = page.request.post(base + "/v1/models/tiny/predict", data=picture.read_bytes(),
                               headers={"Authorization": f"Bearer {SECRET}",
                                        "Content-Type": "image/jpeg"}).json()
    assert page.get_by_test_id("predicted-label").inner_text() == answer["label"]

    # dropping an image classifies it too
    page.get_by_test_id("upload-result").evaluate("node => node.replaceChildren()")
    dropped = page.evaluate_handle(
        """b64 => { const data = new DataTransfer();
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    data.items.add(new File([bytes], "drop.jpg", {type: "image/jpeg"}));
                    return data; }""", base64.b64encode(picture.read_bytes()).decode())
    page.dispatch_event("[data-testid=drop]", "drop", {"dataTransfer": dropped})
    expect(page.get_by_test_id("predicted-label")).to_have_text(answer["label"])

    # the OpenAPI page renders from the package's own Swagger UI files
    page.goto(base + "/docs")
    expect(page.locator(".swagger-ui .title")).to_contain_text("sqlvision")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
