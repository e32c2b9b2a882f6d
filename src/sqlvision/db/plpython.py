"""In-database prediction on PostgreSQL: ``predict()`` and ``predict_topk()`` as PL/Python
functions, callable from any client (``psql``, a BI tool, another language's driver).

:func:`install_functions` (the ``install-functions`` verb) creates, in the URL's schema:

* ``predict(model text, image bytea) -> jsonb``: ``{"label", "confidence", "error"}``, the
  fields of DuckDB's ``predict()`` struct (``predict('m', data)->>'label'``);
* ``predict_topk(model text, image bytea, k integer, min_prob double precision DEFAULT 0)
  -> jsonb``: ``[{"label", "probability"}, ...]``, most probable first
  (``jsonb_array_elements`` unnests it);
* ``embed(model text, image bytea) -> real[]``: the penultimate-layer vector;
* ``sv_plpython_info() -> jsonb``: what the server's Python sees (its version, the directory,
  the versions of sqlvision and ONNX Runtime it imports), to check a setup.

The function bodies only put the *server directory* on ``sys.path`` and call
:func:`server_call` below, so the server's own Python decodes, resizes and scores with
sqlvision's code (the model's preprocessing spec) and ONNX Runtime: one code path with
training and batch prediction. The server directory holds a copy of the sqlvision package and
its runtime packages (``pip install --target``, at this client's versions); when the server
runs on this machine, :func:`install_functions` fills it.

Models are read from the schema's ``sv_models`` and kept per session (PL/Python's ``GD``); a
bare name costs one indexed ``max(version)`` per call, so a newly registered version is picked
up by the next call, and ``'name:3'`` pins a version.
"""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlvision.db.identifiers import quote_identifier
from sqlvision.db.url import DatabaseURL, parse_url, redact_text
from sqlvision.errors import MissingDependencyError, SqlvisionError

#: where the server's Python finds sqlvision and its packages (readable by the server's user)
DEFAULT_SERVER_PATH = "/usr/local/lib/sqlvision-plpython"
#: what the server needs beyond sqlvision's core requirements: scoring and the resize path
INFERENCE_PACKAGES = ("onnxruntime", "opencv-python-headless", "simplejpeg")
#: what the server's Python must import, checked by ``sv_plpython_info()``
SERVER_MODULES = ("sqlvision", "onnxruntime", "numpy", "PIL", "cv2")
_OPTIONAL = {"simplejpeg"}  # a faster JPEG decode giving the same pixels; Pillow otherwise
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# -- inside the server: run by PostgreSQL's Python ---------------------------------------------------
class SessionModels:
    """The classifiers one server session has loaded from one ``sv_models`` table, by reference.

    ``plpy`` is PL/Python's module (SPI); plans are prepared once per session.
    """

    def __init__(self, plpy: Any, models_table: str, parts_table: str) -> None:
        self.plpy = plpy
        self.parts_table = parts_table
        self.loaded: dict[str, Any] = {}
        if not self._exists(models_table):
            raise SqlvisionError(f"no models yet: {models_table} does not exist",
                                 "train one first: sqlvision train NAME --table TABLE")
        self._latest = plpy.prepare(f"SELECT max(version) AS v FROM {models_table} WHERE name = $1",
                                    ["text"])
        self._row = plpy.prepare(
            f"SELECT name, version, architecture, classes, preprocessing, metrics, config, lineage, "
            f"onnx, NULL AS weights, created_at FROM {models_table} WHERE name = $1 AND version = $2",
            ["text", "integer"])

    def get(self, ref: str) -> Any:
        """The classifier for ``name`` (its newest version, checked on every call) or
        ``name:version``, loaded once per session and version."""
        from sqlvision.models.registry import parse_ref

        name, version = parse_ref(ref)
        if version is None:
            version = self.plpy.execute(self._latest, [name])[0]["v"]
            if version is None:
                raise SqlvisionError(f"model {name!r} not found in this schema's sv_models",
                                     "check the name with: sqlvision models list")
        current = self.loaded.get(ref)
        if current is None or current.bundle.version != version:
            current = self.loaded[ref] = self._classifier(name, int(version))
        return current

    def _classifier(self, name: str, version: int) -> Any:
        from sqlvision.models.registry import bundle_from_row
        from sqlvision.models.runtime import OnnxClassifier

        rows = self.plpy.execute(self._row, [name, version])
        if not rows.nrows():
            raise SqlvisionError(f"model '{name}:{version}' not found in this schema's sv_models",
                                 "check the name and version with: sqlvision models list")
        row = dict(rows[0])
        if row["onnx"] is None:  # stored in parts (a server with a statement size limit)
            row["onnx"] = self._parts(name, version)
        # One thread: a backend process serves one query, and scores one row per call.
        return OnnxClassifier(bundle_from_row(row), threads=1)

    def _exists(self, table: str) -> bool:
        plan = self.plpy.prepare("SELECT to_regclass($1) IS NOT NULL AS ok", ["text"])
        return bool(self.plpy.execute(plan, [table])[0]["ok"])

    def _parts(self, name: str, version: int) -> bytes:
        if not self._exists(self.parts_table):
            raise SqlvisionError(f"model '{name}:{version}' has no ONNX graph", "register it again")
        plan = self.plpy.prepare(f"SELECT data FROM {self.parts_table} WHERE name = $1 AND "
                                 "version = $2 AND part = 'onnx' ORDER BY seq", ["text", "integer"])
        return b"".join(bytes(r["data"]) for r in self.plpy.execute(plan, [name, version]))


def _decoded(models: SessionModels, ref: str, image: bytes) -> tuple[Any, Any, str | None]:
    """``(classifier, uint8 1 x C x H x W pixels, None)``, or ``(classifier, None, reason)`` for
    an image that does not decode (it costs only its own row)."""
    classifier = models.get(ref)
    try:
        return classifier, classifier.spec(bytes(image))[None], None
    except SqlvisionError as exc:
        return classifier, None, str(exc)


def _predict(models: SessionModels, ref: str, image: bytes) -> dict[str, Any]:
    classifier, pixels, reason = _decoded(models, ref, image)
    if pixels is None:
        return {"label": None, "confidence": None, "error": reason}
    probs = classifier.predict_proba(pixels)[0]
    best = int(probs.argmax())
    return {"label": classifier.classes[best], "confidence": float(probs[best]), "error": None}


def _predict_topk(models: SessionModels, ref: str, image: bytes, k: int | None = None,
                  min_prob: float | None = None) -> list[dict[str, Any]] | None:
    from sqlvision.predict.batch import top_k_entries

    classifier, pixels, _ = _decoded(models, ref, image)
    if pixels is None:
        return None
    return top_k_entries(classifier.classes, classifier.predict_proba(pixels),
                         5 if k is None else int(k), float(min_prob or 0.0))[0]


def _embed(models: SessionModels, ref: str, image: bytes) -> list[float] | None:
    classifier, pixels, _ = _decoded(models, ref, image)
    if pixels is None:
        return None  # as DuckDB's embed(): NULL for an image that does not decode
    vector: list[float] = classifier.embed(pixels)[0].tolist()
    return vector


_SERVER_FUNCTIONS: dict[str, Callable[..., Any]] = {"predict": _predict, "predict_topk": _predict_topk,
                                                    "embed": _embed}


def server_call(plpy: Any, gd: dict[str, Any], models_table: str, parts_table: str,
                function: str, model: str | None, image: bytes | None, *args: Any) -> Any:
    """What the installed functions run: ``predict`` and ``predict_topk`` give JSON text
    (``jsonb``), ``embed`` a list (``real[]``); NULL for a NULL model or image. A bad model
    reference is the query's error, with sqlvision's hint."""
    if model is None or image is None:
        return None
    sessions = gd.setdefault("sqlvision", {})
    models = sessions.get(models_table)
    try:
        if models is None:
            models = sessions[models_table] = SessionModels(plpy, models_table, parts_table)
        value = _SERVER_FUNCTIONS[function](models, model, image, *args)
        # jsonb results travel as JSON text; embed's real[] as the list itself
        return value if value is None or function == "embed" else json.dumps(value)
    except SqlvisionError as exc:
        plpy.error(exc.message, hint=exc.hint)  # raises: the query fails with the hint
        raise


# -- the SQL installed ---------------------------------------------------------------------------
_PREAMBLE = """import sys
if {path!r} not in sys.path:
    sys.path.insert(0, {path!r})
"""
_CALL = """from sqlvision.db.plpython import server_call
return server_call(plpy, GD, {models!r}, {parts!r}, {function!r}, {args})
"""
# Self-contained (imports nothing of sqlvision's first), so it reports what is missing.
_INFO = """import json, os
info = {{"python": "%d.%d.%d" % sys.version_info[:3], "server_path": {path!r},
        "readable": os.access({path!r}, os.R_OK | os.X_OK), "errors": {{}}}}
for module in {modules!r}:
    try:
        info[module] = __import__(module).__version__
    except Exception as exc:
        info[module] = None
        info["errors"][module] = "%s: %s" % (type(exc).__name__, exc)
return json.dumps(info)
"""


@dataclass(frozen=True)
class _Function:
    name: str
    params: str
    args: str
    comment: str
    returns: str = "jsonb"


_FUNCTIONS = (
    _Function("predict", "model text, image bytea", "model, image",
              "sqlvision: {label, confidence, error} of IMAGE by MODEL ('name' or 'name:version')"),
    _Function("predict_topk", "model text, image bytea, k integer, min_prob double precision "
              "DEFAULT 0.0", "model, image, k, min_prob",
              "sqlvision: the K most probable {label, probability} of IMAGE with probability >= "
              "MIN_PROB, most probable first"),
    _Function("embed", "model text, image bytea", "model, image",
              "sqlvision: the penultimate-layer vector of IMAGE by MODEL", "real[]"),
)


def function_sql(backend: Any, schema: str, server_path: str) -> list[str]:
    """The statements that create the functions in ``schema`` (names quoted, bodies and comments
    literals quoted by the backend's one quoting function; the tables the bodies read are
    qualified with ``schema``, whatever the caller's search path)."""
    literal = backend.quote_literal
    qualify = f"{quote_identifier(schema)}.{{}}".format
    models, parts = qualify(quote_identifier("sv_models")), qualify(quote_identifier("sv_model_parts"))
    preamble = _PREAMBLE.format(path=server_path)
    statements = []
    for f in _FUNCTIONS:
        body = preamble + _CALL.format(models=models, parts=parts, function=f.name, args=f.args)
        name = qualify(quote_identifier(f.name))
        signature = re.sub(r" DEFAULT \S+", "", f.params)
        # PARALLEL UNSAFE (the default): PL/Python's SPI calls open subtransactions, which a
        # parallel query forbids. A query runs in its session's one backend process.
        statements += [f"CREATE OR REPLACE FUNCTION {name}({f.params}) RETURNS {f.returns} LANGUAGE "
                       f"plpython3u STABLE AS {literal(body)}",
                       f"COMMENT ON FUNCTION {name}({signature}) IS {literal(f.comment)}"]
    info = qualify(quote_identifier("sv_plpython_info"))
    info_body = preamble + _INFO.format(path=server_path, modules=SERVER_MODULES)
    statements.append(f"CREATE OR REPLACE FUNCTION {info}() RETURNS jsonb LANGUAGE plpython3u "
                      f"VOLATILE AS {literal(info_body)}")
    return statements


# -- the client side: install-functions ---------------------------------------------------------------
def plpython_missing(major: int) -> SqlvisionError:
    """The one-line error for a server without PL/Python, naming the package to install."""
    return SqlvisionError(f"PL/Python (plpython3u) is not installed on this PostgreSQL {major} server",
                          f"install the Debian package postgresql-plpython3-{major} on the server "
                          f"(apt-get install postgresql-plpython3-{major}), then rerun "
                          "sqlvision install-functions")


@dataclass
class InstallReport:
    """What :func:`install_functions` did and what the server's Python imports."""

    url: str
    schema: str
    server_path: str
    synced: bool
    info: dict[str, Any]

    def summary(self) -> str:
        """Lines for the CLI."""
        return (f"installed predict(model, image), predict_topk(model, image, k[, min_prob]) and "
                f"embed(model, image) in schema {self.schema} of {self.url}\n"
                f"the server's Python {self.info.get('python')} runs sqlvision "
                f"{self.info.get('sqlvision')} and ONNX Runtime {self.info.get('onnxruntime')} from "
                f"{self.server_path}" + (" (updated from this machine)" if self.synced else ""))


def install_functions(url: str | DatabaseURL | None, server_path: str = DEFAULT_SERVER_PATH,
                      sync: bool | None = None, log: Callable[[str], Any] = print) -> InstallReport:
    """Create ``predict``, ``predict_topk`` and ``embed`` in the schema of PostgreSQL ``url``
    (see the module doc; functions of those names and arguments there are replaced).

    ``sync``: fill ``server_path`` from this machine (copy sqlvision, install its packages at
    this client's versions) — by default when the server is local (socket, localhost); a
    remote server needs that directory prepared on its own machine (docs/plpython.md).
    Then checks, in a new session, that the server's Python imports it all.
    """
    from sqlvision.db import open_backend

    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    if parsed.scheme != "postgresql":
        raise SqlvisionError(f"install-functions is for PostgreSQL, not {parsed.scheme} "
                             f"({parsed.redacted})",
                             "on DuckDB and SQLite predict() already runs in sqlvision sql; on "
                             "MariaDB run sqlvision predict and query the TABLE_predicted view")
    backend: Any = open_backend(parsed)
    try:
        schema = backend.schema or backend.scalar("SELECT current_schema()")
        if schema is None:
            raise SqlvisionError("the search path names no schema to create the functions in",
                                 "add ?schema=NAME to the URL")
        _create(backend, schema, server_path)
        info = _server_info(parsed, schema)
    finally:
        backend.close()
    local = not parsed.host or parsed.host.startswith("/") or parsed.host in _LOCAL_HOSTS
    if sync is None:  # a directory this user may not write, already working, is left as it is
        sync = local and (_writable(Path(server_path)) or bool(info["errors"]))
    if sync:
        sync_server_path(Path(server_path), info["python"], log)
        info = _server_info(parsed, schema)  # a new session: the imports as a query will see them
    missing = [m for m in SERVER_MODULES if m in info["errors"]]
    if missing:
        raise SqlvisionError(
            f"the server's Python {info['python']} cannot import {', '.join(missing)} from "
            f"{server_path} ({info['errors'][missing[0]]})",
            "run sqlvision install-functions on the server's machine as root, or prepare "
            f"{server_path} there as docs/plpython.md says")
    return InstallReport(parsed.redacted, schema, server_path, sync, info)


def _create(backend: Any, schema: str, server_path: str) -> None:
    """PL/Python enabled, then the functions created in one transaction."""
    import psycopg

    major = int(backend.scalar("SHOW server_version_num")) // 10000
    if not backend.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'plpython3u'"):
        raise plpython_missing(major)
    try:
        backend.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        with backend.transaction():
            for statement in function_sql(backend, schema, server_path):
                backend.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SqlvisionError(f"cannot create PL/Python functions: {backend.clean(exc)}",
                             "plpython3u is an untrusted language: run install-functions as a "
                             "superuser (once per schema)") from None
    except psycopg.errors.UndefinedFile:  # listed, but its library is gone
        raise plpython_missing(major) from None


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (or create it in its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def _server_info(url: DatabaseURL, schema: str) -> dict[str, Any]:
    """``sv_plpython_info()`` in a fresh session (a session's Python keeps what it imported)."""
    from sqlvision.db import open_backend

    backend: Any = open_backend(url)
    try:
        value = backend.scalar(f"SELECT {quote_identifier(schema)}.sv_plpython_info()")
    finally:
        backend.close()
    return json.loads(value) if isinstance(value, str) else dict(value)


def server_requirements() -> dict[str, str]:
    """Distribution name -> version for the server directory: sqlvision's core requirements
    and :data:`INFERENCE_PACKAGES`, at the versions installed here, so the server decodes,
    resizes and scores exactly as this machine does."""
    names = [m[0] for r in metadata.requires("sqlvision") or [] if ";" not in r
             if (m := _REQUIREMENT_NAME.match(r))]
    wanted: dict[str, str] = {}
    for name in [*names, *INFERENCE_PACKAGES]:
        try:
            wanted[_canonical(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in _OPTIONAL:
                continue
            raise MissingDependencyError(f"{name} is not installed here, so it cannot be installed "
                                         "for the server at the same version",
                                         'pip install "sqlvision[train]"') from None
    return wanted


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sync_server_path(target: Path, python: str, log: Callable[[str], Any] = print) -> None:
    """Copy this sqlvision into ``target`` and install the packages it lacks (pip, wheels for
    the server's ``python`` version), all readable by the server's user."""
    try:
        if not target.exists():  # an existing directory keeps its own permissions
            target.mkdir(parents=True)
            target.chmod(0o755)
        copy_package(target)
    except PermissionError as exc:
        raise SqlvisionError(f"cannot write the server directory {target} ({exc.strerror})",
                             "run install-functions as root (or a user who may write there), or "
                             "choose another directory with --server-path") from None
    wanted = server_requirements()
    present = {_canonical(d.metadata["Name"]): d.version
               for d in metadata.distributions(path=[str(target)])}
    stale = sorted(n for n, v in wanted.items() if present.get(n) != v)
    if not stale:
        return
    log(f"installing {', '.join(stale)} for the server's Python {python} into {target} (pip)")
    major_minor = ".".join(python.split(".")[:2])
    # Every requirement pinned, not only the stale ones: pip --target resolves from scratch.
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--upgrade", "--target", str(target), "--only-binary=:all:",
               "--python-version", major_minor, *(f"{n}=={v}" for n, v in sorted(wanted.items()))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = redact_text(" ".join(done.stderr.strip().splitlines()[-3:]))  # index URLs
        raise SqlvisionError(f"pip could not install the server's packages into {target}: {tail}",
                             "check that this machine reaches the package index, then rerun")


def copy_package(target: Path) -> None:
    """This sqlvision package (code only, bytecode precompiled) into ``target/sqlvision``,
    swapped in whole so a session starting meanwhile never imports half a copy."""
    import sqlvision

    source = Path(sqlvision.__file__).resolve().parent
    staging = Path(tempfile.mkdtemp(prefix=".sqlvision-", dir=target))
    try:
        shutil.copytree(source, staging / "sqlvision", ignore=_code_only)
        compileall.compile_dir(staging / "sqlvision", quiet=1, workers=1)
        for root, _dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        live = target / "sqlvision"
        if live.exists():
            live.rename(staging / "old")
        (staging / "sqlvision").rename(live)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _code_only(folder: str, names: list[str]) -> set[str]:
    """shutil.copytree's ignore: bytecode caches, and the sample's data files."""
    skip = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
    if Path(folder).name == "sample":
        skip |= {n for n in names if not n.endswith(".py")}
    return skip
