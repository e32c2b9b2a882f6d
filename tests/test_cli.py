"""The command line: help, output formats, one-line errors, the demo, a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import sqlvision as sv
from sqlvision.cli import build_parser, main

VERBS = ["ingest", "sql", "stats", "show", "train", "predict", "evaluate", "embed", "similar",
         "tables", "demo"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_db_option(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--db URL" in out and "usage: sqlvision " + verb in out


@pytest.mark.parametrize("action", ["list", "show", "export", "import", "delete", "archs", "pretrained",
                                    "quantize"])
def test_models_actions_have_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["models", action, "--help"])
    assert exit_info.value.code == 0 and "--db URL" in capsys.readouterr().out


def test_train_and_models_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import SAMPLE

    db = f"duckdb:///{tmp_path / 'm.duckdb'}"
    run(capsys, "ingest", "fashion", str(SAMPLE / "fashion-mnist"), "--db", db, "--no-progress")
    code, out, err = run(capsys, "train", "fm", "--table", "fashion", "--where", "id % 10 = 0",
                         "--epochs", "1", "--arch", "sv_cnn_small", "--no-progress", "--db", db,
                         "--checkpoint-dir", str(tmp_path / "ck"))
    assert code == 0, err
    assert "epoch 1/1" in out and "model fm:1 registered (sv_cnn_small, 10 classes" in out
    code, out, _ = run(capsys, "models", "list", "--db", db)
    assert "fm:1" in out and "sv_cnn_small" in out
    code, out, _ = run(capsys, "models", "show", "fm", "--db", db)
    assert "input: input float [batch, 1, 28, 28]" in out and "output: logits float [batch, 10]" in out
    bundle = tmp_path / "fm.svmodel"
    assert run(capsys, "models", "export", "fm:1", "--out", str(bundle), "--db", db)[0] == 0
    other = f"sqlite:///{tmp_path / 'o.sqlite'}"
    code, out, _ = run(capsys, "models", "import", "fm", str(bundle), "--db", other)
    assert code == 0 and "registered fm:1" in out
    code, out, _ = run(capsys, "models", "delete", "fm", "--db", db)
    assert "deleted 1 version of fm" in out
    code, _, err = run(capsys, "models", "show", "fm", "--db", db)
    assert code == 1 and "model 'fm' not found" in err


def test_top_level_help_lists_verbs() -> None:
    text = build_parser().format_help()
    for verb in VERBS:
        assert verb in text


def test_ingest_sql_formats(tmp_path: Path, make_images: Callable[..., Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    db = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    root = make_images({"cat": 2, "dog": 1})
    (root / "cat" / "broken.jpg").write_text("nope")
    code, out, _ = run(capsys, "ingest", "photos", str(root), "--db", db, "--no-progress")
    assert code == 0
    assert "3 added" in out and "1 skipped (1 not an image)" in out and "broken.jpg" in out
    code, out, _ = run(capsys, "sql", "SELECT label, count(*) AS n FROM photos GROUP BY label "
                       "ORDER BY label", "--db", db, "--format", "json")
    assert json.loads(out) == [{"label": "cat", "n": 2}, {"label": "dog", "n": 1}]
    code, out, _ = run(capsys, "sql", "SELECT id, label FROM photos ORDER BY id", "--db", db,
                       "--format", "csv")
    assert out.splitlines() == ["id,label", "1,cat", "2,cat", "3,dog"]
    code, out, _ = run(capsys, "sql", "SELECT id, data FROM photos ORDER BY id LIMIT 1", "--db", db)
    assert "bytes>" in out and "(1 row)" in out
    code, out, _ = run(capsys, "stats", "photos", "--db", db, "--plot", str(tmp_path / "s.png"))
    assert code == 0 and "3 images, 2 labels" in out and (tmp_path / "s.png").exists()
    code, out, _ = run(capsys, "show", "photos", "--id", "2", "--out", str(tmp_path / "two.jpg"),
                       "--db", db)
    assert code == 0 and (tmp_path / "two.jpg").read_bytes() == (root / "cat" / "cat_1.jpg").read_bytes()
    code, out, _ = run(capsys, "show", "photos", "--out", str(tmp_path / "sheet.png"), "--db", db)
    assert code == 0 and (tmp_path / "sheet.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sql", "SELECT * FROM nowhere"], "nowhere"),
        (["ingest", "photos", "/definitely/not/here"], "source not found: /definitely/not/here"),
        (["stats", "ghost"], "table 'ghost' not found"),
        (["ingest", "t", ".", "--labels", "regex:(x"], "bad label pattern"),
        (["ingest", "t", ".", "--split", "random:a,b"], "random:TRAIN,VAL,TEST"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path: Path, argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    sv.connect(tmp_path / "e.duckdb").close()  # read verbs refuse a database file that is not there
    code, _out, err = run(capsys, *argv, "--db", f"duckdb:///{tmp_path / 'e.duckdb'}")
    assert code == 1
    assert err.startswith("sqlvision: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sqlvision.cli", "stats", "ghost", "--debug",
                           "--db", f"duckdb:///{tmp_path / 'd.duckdb'}"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_import_does_not_load_torch() -> None:
    code = "import sys, sqlvision; sqlvision.connect('duckdb://'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--workdir", str(tmp_path / "demo"), "--epochs", "1")
    assert code == 0
    assert "clothing: 280 added" in out and "fashion: 4000 added" in out
    assert "model fashion-cnn:1 registered" in out
    accuracy = float(out.split("held-out images (from SQL): ")[1].split()[0])
    assert f"evaluate: accuracy {accuracy:.4f}" in out  # SQL and evaluate agree
    assert 0.2 < accuracy <= 1.0  # one epoch on 3,000 images: well above chance (0.1)
    for name in ("clothing-stats.png", "clothing-sheet.png", "fashion-stats.png", "demo.duckdb"):
        assert (tmp_path / "demo" / name).exists()


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``sqlvision sql ... | head -1`` with more output than a pipe holds: no BrokenPipeError
    traceback, exit 0."""
    query = "SELECT range AS n FROM range(300000)"
    sv.connect(tmp_path / "p.duckdb").close()
    shell = (f"{sys.executable} -m sqlvision.cli --db {tmp_path / 'p.duckdb'} sql '{query}' "
             "--format csv | head -1; echo \"exit ${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["n", "exit 0"], done.stderr
    assert "BrokenPipe" not in done.stderr and "Traceback" not in done.stderr
