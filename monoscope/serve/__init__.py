"""monoscope.serve: the feature browser.

One front end (static/: HTML, CSS and plain scripts, no build step) over one data shape
(records.py), two ways to run it: `serve` (a FastAPI server with the JSON API and "what fires
on my text") and `export_site` (a static folder that opens from file://).
"""

from monoscope.serve.export import export_site
from monoscope.serve.server import open_app, serve
from monoscope.serve.store import FeatureNotFound, FeatureStore

__all__ = ["FeatureNotFound", "FeatureStore", "export_site", "open_app", "serve"]
