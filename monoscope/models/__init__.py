"""Causal LMs with named sites: loading, capture with early stop, patching."""

from monoscope.models.builtin import BUILTIN_MODELS, BuiltinModelMissingError
from monoscope.models.hub import ModelNotFoundError
from monoscope.models.language_model import LanguageModel
from monoscope.models.loading import load_model
from monoscope.models.sites import Site, UnknownSiteError, UnsupportedModelError

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModelMissingError",
    "LanguageModel",
    "ModelNotFoundError",
    "Site",
    "UnknownSiteError",
    "UnsupportedModelError",
    "load_model",
]
