"""Training on real DuckDB/SQLite tables: registration, export/import, resume after SIGKILL,
transfer learning, bad input. Small selections and the small built-in CNN keep it fast."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sqlvision as sv
from sqlvision.models.runtime import OnnxClassifier
from tests.conftest import SAMPLE

FAST = {"arch": "sv_cnn_small", "batch_size": 32, "workers": 2}
SUBSET = "id % 10 = 0"  # 300 train + 100 test rows of the bundled Fashion-MNIST sample


@pytest.fixture
def fashion_db(db: sv.Database) -> sv.Database:
    db.ingest("fashion", SAMPLE / "fashion-mnist")
    return db


def test_one_epoch_registers_a_model_with_metrics(fashion_db: sv.Database, tmp_path: Path) -> None:
    db = fashion_db
    result = db.train("fm", "fashion", where=SUBSET, epochs=1, checkpoint_dir=tmp_path / "ck",
                      progress=False, log=lambda _: None, **FAST)
    bundle = db.model("fm")
    assert bundle.version == 1 and len(bundle.classes) == 10
    assert bundle.onnx[:2] == b"\x08\x08" or len(bundle.onnx) > 1000
    assert bundle.spec.mode == "L" and (bundle.spec.height, bundle.spec.width) == (28, 28)
    assert bundle.metrics["epochs_run"] == 1 and bundle.metrics["onnx_max_abs_diff"] <= 1e-3
    assert bundle.lineage["source_table"] == "fashion" and bundle.lineage["where"] == SUBSET
    assert bundle.lineage["row_count"] == 300 and len(bundle.lineage["fingerprint"]) == 16
    runs = db.sql("SELECT epoch, train_loss, val_accuracy FROM sv_runs WHERE model = 'fm'").fetchall()
    assert len(runs) == 1 and runs[0][1] > 0 and 0 <= runs[0][2] <= 1
    assert result.curves is not None and result.curves.exists()
    assert (tmp_path / "ck" / "last.pt").exists()
    db.train("fm", "fashion", where=SUBSET, epochs=1, checkpoint_dir=tmp_path / "ck2",
             progress=False, log=lambda _: None, **FAST)
    assert [r[0] for r in db.sql("SELECT version FROM sv_models ORDER BY version").fetchall()] == [1, 2]


def test_training_learns(fashion_db: sv.Database, tmp_path: Path) -> None:
    result = fashion_db.train("fm", "fashion", epochs=4, checkpoint_dir=tmp_path, progress=False,
                              log=lambda _: None, **FAST)
    # 3,000 Fashion-MNIST images, 4 epochs: far above the 10% of chance.
    assert result.bundle.metrics["val_accuracy"] > 0.6


def test_export_then_import_gives_identical_predictions(fashion_db: sv.Database, tmp_path: Path) -> None:
    fashion_db.train("fm", "fashion", where=SUBSET, epochs=1, checkpoint_dir=tmp_path,
                     progress=False, log=lambda _: None, **FAST)
    bundle = fashion_db.model("fm")
    path = bundle.write(tmp_path / "fm.svmodel")
    images = [r[0] for r in fashion_db.sql("SELECT data FROM fashion WHERE split = 'test' LIMIT 40")]
    with sv.connect(tmp_path / "other.sqlite") as other:
        imported = other.import_model("copy", path)
        assert imported.ref == "copy:1" and imported.lineage["original"] == "fm:1"
        again = other.model("copy")
    before = OnnxClassifier(bundle).predict_bytes(images)
    after = OnnxClassifier(again).predict_bytes(images)
    assert np.array_equal(before, after)
    assert again.classes == bundle.classes and again.spec == bundle.spec


def test_import_plain_onnx_with_labels(fashion_db: sv.Database, tmp_path: Path) -> None:
    fashion_db.train("fm", "fashion", where=SUBSET, epochs=1, checkpoint_dir=tmp_path,
                     progress=False, log=lambda _: None, **FAST)
    bundle = fashion_db.model("fm")
    (tmp_path / "m.onnx").write_bytes(bundle.onnx)
    (tmp_path / "labels.txt").write_text("\n".join(bundle.classes))
    imported = fashion_db.import_model("ext", tmp_path / "m.onnx", labels=str(tmp_path / "labels.txt"),
                                       image_size=(28, 28), grayscale=True, resize="squash",
                                       mean=(0.5,), std=(0.5,))
    assert imported.architecture == "onnx" and imported.weights is None
    assert imported.spec.resampler == "opencv"
    exact = fashion_db.import_model("ext", tmp_path / "m.onnx", labels=str(tmp_path / "labels.txt"),
                                    image_size=(28, 28), grayscale=True, resampler="pillow")
    assert fashion_db.model("ext", exact.version).spec.resampler == "pillow"  # stored with it
    with pytest.raises(sv.SqlvisionError, match="--labels"):
        fashion_db.import_model("ext", tmp_path / "m.onnx")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(sv.SqlvisionError, match="3 classes"):
        fashion_db.import_model("ext", tmp_path / "m.onnx", labels=str(tmp_path / "three.txt"),
                                image_size=(28, 28), grayscale=True)
    with pytest.raises(sv.SqlvisionError, match="does not accept input"):
        fashion_db.import_model("ext", tmp_path / "m.onnx", labels=str(tmp_path / "labels.txt"))


_TRAIN_SCRIPT = """
import sys, sqlvision as sv
db = sv.connect(sys.argv[1])
db.train("fm", "fashion", epochs=3, arch="sv_cnn_small", batch_size=16, workers=2,
         checkpoint_every=5, checkpoint_dir=sys.argv[2], resume=len(sys.argv) > 3,
         progress=False, log=lambda line: print(line, flush=True))
"""


def test_sigkill_then_resume_finishes_the_run(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'k.duckdb'}"
    with sv.connect(url) as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist")
        db.backend.execute("DELETE FROM fashion WHERE id % 5 <> 0")  # 600 train + 200 test rows
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, url, str(ck)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = iter(proc.stdout.readline, "")
    first = next(line for line in lines if line.startswith("epoch "))  # once epoch 1 is logged
    assert first.startswith("epoch 1/3")
    time.sleep(0.5)  # into epoch 2: a mid-epoch checkpoint exists every 5 steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert (ck / "last.pt").exists()
    done = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, url, str(ck), "resume"],
                          capture_output=True, text=True, check=True)
    assert "epoch 3/3" in done.stdout and "epoch 1/3" not in done.stdout
    with sv.connect(url) as db:
        epochs = db.sql("SELECT epoch, count(*) FROM sv_runs GROUP BY epoch ORDER BY epoch").fetchall()
        assert epochs == [(1, 1), (2, 1), (3, 1)]
        assert len({r[0] for r in db.sql("SELECT DISTINCT run_id FROM sv_runs")}) == 1
        assert db.model("fm").metrics["epochs_run"] == 3


def test_resuming_a_finished_run_registers_nothing(fashion_db: sv.Database, tmp_path: Path) -> None:
    settings = {"where": SUBSET, "epochs": 1, "checkpoint_dir": tmp_path / "ck", "progress": False,
                "log": lambda _: None, **FAST}
    fashion_db.train("fm", "fashion", **settings)
    with pytest.raises(sv.SqlvisionError, match=r"already finished and is registered as fm:1"):
        fashion_db.train("fm", "fashion", resume=True, **settings)
    assert fashion_db.sql("SELECT count(*) FROM sv_models").scalar() == 1


def test_resume_without_checkpoint_is_a_clear_error(fashion_db: sv.Database, tmp_path: Path) -> None:
    with pytest.raises(sv.SqlvisionError, match="no checkpoint to resume"):
        fashion_db.train("fm", "fashion", epochs=1, resume=True, checkpoint_dir=tmp_path / "none",
                         progress=False, **FAST)


def test_transfer_from_a_registered_model(fashion_db: sv.Database, tmp_path: Path) -> None:
    db = fashion_db
    db.train("base", "fashion", where=SUBSET, epochs=1, checkpoint_dir=tmp_path / "a",
             progress=False, log=lambda _: None, **FAST)
    subset = f"{SUBSET} AND label IN ('Bag', 'Sandal', 'Trouser')"
    child = db.train("child", "fashion", where=subset, epochs=1, from_model="base",
                     checkpoint_dir=tmp_path / "b", progress=False, log=lambda _: None,
                     batch_size=16, workers=2)
    assert child.bundle.lineage["parent"] == "base:1"
    assert child.bundle.spec.resampler == db.model("base").spec.resampler == "opencv"
    assert child.bundle.architecture == "sv_cnn_small"
    assert child.bundle.classes == db.model("base").classes  # a subset keeps the parent's head
    assert any("started from base:1 (all layers)" in m for m in child.messages)
    with pytest.raises(sv.SqlvisionError, match="takes L images"):
        db.train("rgbchild", "fashion", where=SUBSET, epochs=1, from_model="base", grayscale=False,
                 checkpoint_dir=tmp_path / "c", progress=False, **FAST)


def test_pretrained_file_through_timm_and_head_only_training(db: sv.Database, tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    from sqlvision.models.bundle import weights_from_bytes

    db.ingest("fashion", SAMPLE / "fashion-mnist")
    donor = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    weights = tmp_path / "resnet10t.safetensors"
    save_file(donor.state_dict(), str(weights))
    result = db.train("tl", "fashion", where=SUBSET, epochs=1, arch="resnet10t",
                      pretrained_file=str(weights), train_layers="head", image_size=(32, 32),
                      grayscale=True, probe=False,
                      checkpoint_dir=tmp_path / "ck", progress=False, log=lambda _: None,
                      batch_size=32, workers=2)
    trained = weights_from_bytes(result.bundle.weights)
    donor_state = donor.state_dict()
    assert torch.equal(trained["conv1.0.weight"], donor_state["conv1.0.weight"])  # frozen backbone
    assert not torch.equal(trained["fc.weight"], donor_state["fc.weight"])  # the head trained
    assert result.bundle.metrics["trainable_parameters"] == donor.fc.weight.numel() + donor.fc.bias.numel()


def test_bad_input(fashion_db: sv.Database, tmp_path: Path) -> None:
    db = fashion_db
    quiet = {"checkpoint_dir": tmp_path, "progress": False, "log": lambda _: None, **FAST}
    with pytest.raises(sv.SqlvisionError, match="no labeled rows"):
        db.train("m", "fashion", where="label = 'nothing'", epochs=1, **quiet)
    with pytest.raises(sv.SqlvisionError, match="only one class"):
        db.train("m", "fashion", where="label = 'Bag'", epochs=1, **quiet)
    with pytest.raises(sv.SqlvisionError, match="did you mean resnet18"):
        db.train("m", "fashion", epochs=1, **{**quiet, "arch": "resnet1"})
    with pytest.raises(sv.SqlvisionError, match="untrained model"):
        db.train("m", "fashion", epochs=0, **quiet)
    with pytest.raises(sv.SqlvisionError, match="--lr"):
        db.train("m", "fashion", epochs=1, lr=-1.0, **quiet)
    with pytest.raises(sv.SqlvisionError, match="not found"):
        db.train("m", "fashion", epochs=1, from_model="ghost", **quiet)


def test_unlabeled_and_undecodable_rows_are_skipped_and_counted(fashion_db: sv.Database,
                                                                tmp_path: Path) -> None:
    db = fashion_db
    db.backend.execute("UPDATE fashion SET label = NULL WHERE id IN (10, 20, 30)")
    db.backend.execute("UPDATE fashion SET data = ? WHERE id IN (40, 50)", [b"not an image"])
    result = db.train("m", "fashion", where=SUBSET, epochs=2, checkpoint_dir=tmp_path,
                      progress=False, log=lambda _: None, **FAST)
    assert result.skipped_unlabeled == 3
    assert result.skipped_unreadable == 2
    assert result.bundle.lineage["unreadable_skipped"] == 2
    skipped = db.sql("SELECT skipped FROM sv_runs ORDER BY epoch").fetchall()
    assert sum(s for (s,) in skipped) == 2  # counted once, then left out of later epochs


def test_users_own_table(db: sv.Database, tmp_path: Path) -> None:
    """The MariaDB walk-through's layout: integer labels named by a categories table."""
    types = db.backend.type_names
    db.backend.execute(f"CREATE TABLE tf_images (img_idx INTEGER PRIMARY KEY, img_label INTEGER, "
                       f"img_blob {types['blob']}, img_use INTEGER)")
    db.backend.execute(f"CREATE TABLE categories (class_idx INTEGER, class_name {types['key']})")
    db.backend.executemany("INSERT INTO categories VALUES (?, ?)", [(0, "dark"), (1, "light")])
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        label = i % 2
        pixels = rng.integers(0, 60, (16, 16), dtype=np.uint8) + (150 if label else 0)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "L").save(buf, "PNG")
        rows.append((i, label, buf.getvalue(), 1 if i < 100 else 2))
    db.backend.executemany("INSERT INTO tf_images VALUES (?, ?, ?, ?)", rows)
    columns = {"id_col": "img_idx", "image_col": "img_blob", "label_col": "img_label",
               "label_names": "SELECT class_idx, class_name FROM categories"}
    result = db.train("own", "tf_images", where="img_use = 1", epochs=6,
                      checkpoint_dir=tmp_path / "ck", progress=False, log=lambda _: None,
                      **{**FAST, "batch_size": 8}, **columns)
    assert result.bundle.classes == ["dark", "light"]
    assert result.bundle.metrics["val_accuracy"] >= 0.9
    assert json.loads(db.sql("SELECT lineage FROM sv_models").scalar())["id_col"] == "img_idx"
    ev = db.evaluate("own", "tf_images", where="img_use = 2", progress=False, **columns)
    assert ev.rows == 20 and ev.accuracy >= 0.9
    counts = db.stats("tf_images", split_col="img_use", **columns).to_pylist()
    assert [(r["label"], r["total"]) for r in counts] == [("dark", 60), ("light", 60)]
    with pytest.raises(sv.SqlvisionError, match="--label-names query"):
        db.stats("tf_images", **{**columns, "label_names": "SELECT class_idx FROM categories"})


def test_check_export_catches_a_wrong_graph() -> None:
    from sqlvision.models.architectures import create
    from sqlvision.models.export import check_export, to_onnx

    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    first = create("sv_cnn_small", 3, 1).eval()
    second = create("sv_cnn_small", 3, 1).eval()
    onnx_bytes = to_onnx(first, x)
    assert check_export(first, onnx_bytes, x) < 1e-3
    with pytest.raises(sv.SqlvisionError, match="differ from PyTorch"):
        check_export(second, onnx_bytes, x)


@pytest.mark.parametrize("name", ["../../x", "/abs", "", "name:3", "$\\foo$", "a/b", ".hidden"])
def test_model_names_follow_one_rule(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with sv.connect(tmp_path / "n.duckdb") as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        with pytest.raises(sv.SqlvisionError, match="bad model name"):
            db.train(name, "fashion", where=SUBSET, epochs=1, progress=False, **FAST)
        assert list(work.iterdir()) == []  # no checkpoint written anywhere
        assert not db.backend.table_exists("sv_models")


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 8, 9])
def test_every_schedule_runs_however_few_the_steps(steps: int) -> None:
    import torch

    from sqlvision.train.config import SCHEDULES, TrainConfig
    from sqlvision.train.optim import build_schedule

    for schedule in SCHEDULES:
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        scheduler = build_schedule(TrainConfig(schedule=schedule), optimizer, steps)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] >= 0.0
