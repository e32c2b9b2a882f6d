"""sqlvision: image classification where the data already lives, in SQL databases.

``import sqlvision as sv; db = sv.connect()`` opens embedded DuckDB; every CLI verb is a method
of the returned :class:`Database`. Importing this package does not import torch.
"""

from sqlvision.connection import Database, connect
from sqlvision.errors import ImageError, MissingDependencyError, SqlvisionError
from sqlvision.result import Result

__version__ = "0.1.0"

__all__ = [
    "Database",
    "ImageError",
    "MissingDependencyError",
    "Result",
    "SqlvisionError",
    "__version__",
    "connect",
]
