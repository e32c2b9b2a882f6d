"""Ingest: images from folders, files, globs, URIs, labels files and IDX archives into a table."""

from sqlvision.ingest.pipeline import IngestReport, ingest

__all__ = ["IngestReport", "ingest"]
