"""Ingest: images from folders, files, globs, URIs, labels files and IDX archives into a table."""

from sqlvision.ingest.pipeline import DEFAULT_MAX_BYTES, IngestReport, ingest

__all__ = ["DEFAULT_MAX_BYTES", "IngestReport", "ingest"]
