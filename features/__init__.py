"""The mae-affect feature store: per-frame embeddings of Aff-Wild2 videos, format version 1.

The contract between the extraction stage and the temporal heads, readable without this package by
plain ``zarr`` or ``h5py`` (layout in ``features.format`` and ``docs/feature-store.md``). It imports
nothing from ``pipeline``.
"""

from .errors import StoreError
from .fill import FILLS
from .format import CHUNK_ROWS, FORMAT_NAME, FORMAT_VERSION, IDENTITY_KEYS, infer_format
from .reader import FeatureStore, Packed, open_store
from .tools import consolidate_store, export_store, merge_stores, verify_store
from .writer import StoreWriter, VideoWriter, create_store, part_path

__all__ = [
    "CHUNK_ROWS", "FILLS", "FORMAT_NAME", "FORMAT_VERSION", "IDENTITY_KEYS",
    "FeatureStore", "Packed", "StoreError", "StoreWriter", "VideoWriter",
    "consolidate_store", "create_store", "export_store", "infer_format", "merge_stores",
    "open_store", "part_path", "verify_store",
]
