"""Looking at an image table: counts per label and split, a bar chart, one image, a contact sheet."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image, ImageDraw, ImageOps

from sqlvision.db.base import Backend
from sqlvision.deps import require
from sqlvision.errors import ImageError, SqlvisionError, command
from sqlvision.imaging import decode
from sqlvision.tables import ImageTable, image_bytes

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
               "TIFF": ".tif"}


def _where(where: str | None) -> str:
    return f" WHERE {where}" if where else ""


def label_split_counts(backend: Backend, table: ImageTable, where: str | None = None) -> pa.Table:
    """Rows per label (one row each) and split (one column each), with a total column."""
    q = backend.quote_column
    label = q(table.label) if table.label else "NULL"
    split = q(table.split) if table.split else "NULL"
    groups = [c for c in (label, split) if c != "NULL"]  # PostgreSQL refuses GROUP BY NULL
    group_by = f" GROUP BY {', '.join(groups)}" if groups else ""
    counts = backend.query(
        f"SELECT {label} AS label, {split} AS split, count(*) AS n "
        f"FROM {backend.quote(table.name)}{_where(where)}{group_by}"
    ).to_pylist()
    order = {"train": 0, "validation": 1, "test": 2}
    splits = sorted({str(r["split"]) if r["split"] is not None else "(none)" for r in counts},
                    key=lambda s: (order.get(s, 3), s))
    labels = sorted({r["label"] for r in counts}, key=lambda v: (v is None, str(v)))
    grid: dict[Any, dict[str, int]] = {lab: dict.fromkeys(splits, 0) for lab in labels}
    for r in counts:
        grid[r["label"]][str(r["split"]) if r["split"] is not None else "(none)"] += r["n"]
    columns: dict[str, list[Any]] = {"label": [table.label_of(v) for v in labels]}
    for s in splits:
        columns[s] = [grid[lab][s] for lab in labels]
    columns["total"] = [sum(grid[lab].values()) for lab in labels]
    return pa.table(columns)


def mathtext_safe(text: str) -> str:
    """``text`` as matplotlib shows it literally (a ``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def plot_counts(counts: pa.Table, out: str | os.PathLike[str], title: str) -> Path:
    """Grouped bar chart of :func:`label_split_counts` (the per-class balance plot)."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    labels = [mathtext_safe(v) if v is not None else "(no label)"
              for v in counts.column("label").to_pylist()]
    splits = [c for c in counts.column_names if c not in ("label", "total")]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) + 2), 4.5))
    for i, s in enumerate(splits):
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, counts.column(s).to_pylist(), width,
               label=s)
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 6 else 0, ha="right")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(mathtext_safe(title))
    if len(splits) > 1 or splits != ["(none)"]:
        ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fetch_image(backend: Backend, table: ImageTable, image_id: Any) -> tuple[bytes, Any]:
    """The bytes and label of the row whose id is ``image_id`` (read from its uri if needed)."""
    q = backend.quote_column
    uri = q(table.uri) if table.uri else "NULL"
    label = q(table.label) if table.label else "NULL"
    try:
        rows = backend.query(
            f"SELECT {q(table.image)}, {uri}, {label} FROM {backend.quote(table.name)} "
            f"WHERE {q(table.id)} = ?",
            [image_id],
        )
    except SqlvisionError:
        raise
    except Exception as exc:  # an id the column's type cannot hold ('abc' for an integer id)
        raise SqlvisionError(f"bad id {image_id!r} for column {table.id} of {table.name}",
                             f"list ids with: {_ids_command(backend, table)}") from exc
    if not rows.num_rows:
        raise SqlvisionError(f"no row with {table.id} = {image_id!r} in {table.name}",
                             f"list ids with: {_ids_command(backend, table)}")
    data, location, lab = (rows.column(i)[0].as_py() for i in range(3))
    return image_bytes(data, location), lab


def _ids_command(backend: Backend, table: ImageTable) -> str:
    return command("sql", f"SELECT {backend.quote_column(table.id)} FROM "
                          f"{backend.quote(table.name)} LIMIT 20", "--db", backend.url.redacted)


def write_image(data: bytes, out: str | os.PathLike[str] | None, stem: str) -> Path:
    """Write image bytes as they are, or converted when ``out``'s extension asks another format."""
    try:
        fmt = Image.open(io.BytesIO(data)).format or "PNG"
    except (OSError, SyntaxError) as exc:
        raise ImageError(f"stored image cannot be read: {exc}", "re-ingest the file") from exc
    path = Path(out) if out else Path(stem + _EXTENSIONS.get(fmt, ".png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = Image.registered_extensions().get(path.suffix.lower())
    if wanted is None or wanted == fmt:
        path.write_bytes(data)
    else:
        img = decode(data)
        if wanted == "JPEG" and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(path, format=wanted)
    return path


def contact_sheet(backend: Backend, table: ImageTable, out: str | os.PathLike[str],
                  per_label: int = 6, where: str | None = None, thumb: int = 96) -> Path:
    """A PNG grid: one row per label, the first ``per_label`` images of each."""
    q = backend.quote_column
    label = q(table.label) if table.label else "NULL"
    uri = q(table.uri) if table.uri else "NULL"
    rows = backend.query(
        f"SELECT lab, img, loc, rid FROM (SELECT {label} AS lab, {q(table.image)} AS img, "
        f"{uri} AS loc, {q(table.id)} AS rid, "
        f"ROW_NUMBER() OVER (PARTITION BY {label} ORDER BY {q(table.id)}) AS rn "
        f"FROM {backend.quote(table.name)}{_where(where)}) AS ranked WHERE rn <= ? "
        "ORDER BY lab, rn",
        [per_label],
    ).to_pylist()
    if not rows:
        raise SqlvisionError(f"no images in {table.name}{_where(where)}", "check the table or filter")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["lab"], []).append(r)
    margin, text_w, caption = 4, 120, 12
    cell = thumb + caption + margin
    sheet = Image.new("RGB", (text_w + per_label * (thumb + margin) + margin,
                              len(groups) * cell + margin), "white")
    draw = ImageDraw.Draw(sheet)
    for gi, (lab, items) in enumerate(groups.items()):
        y = margin + gi * cell
        draw.text((margin, y + thumb // 2 - 6), str(table.label_of(lab))[:18] if lab is not None
                  else "(no label)",
                  fill="black")
        for ii, r in enumerate(items):
            x = text_w + margin + ii * (thumb + margin)
            draw.text((x, y + thumb + 1), f"id {r['rid']}"[:16], fill="dimgray")  # for show --id
            try:
                img = decode(image_bytes(r["img"], r["loc"]), mode="RGB")
            except SqlvisionError:
                draw.rectangle([x, y, x + thumb, y + thumb], outline="red")
                draw.text((x + 4, y + 4), "unreadable", fill="red")
                continue
            sheet.paste(ImageOps.pad(img, (thumb, thumb), color="white"), (x, y))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path

