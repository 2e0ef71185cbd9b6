"""One pass over an activation store -> the feature store (SQLite; see schema.py).

`monoscope analyze --sae DIR --acts DIR --out features.db`, or `analyze(sae, store, out=...)`.
"""

from monoscope.analyze.config import AnalyzeConfig
from monoscope.analyze.runner import analyze, run
from monoscope.analyze.schema import SCHEMA_VERSION, FeatureStoreError, open_readonly, read_meta
from monoscope.analyze.tables import export_parquet

__all__ = [
    "SCHEMA_VERSION",
    "AnalyzeConfig",
    "FeatureStoreError",
    "analyze",
    "export_parquet",
    "open_readonly",
    "read_meta",
    "run",
]
