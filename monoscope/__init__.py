"""monoscope: dictionary learning on language models.

The curated public API; implementations live in the stage subpackages.
"""

from monoscope.analyze import AnalyzeConfig
from monoscope.analyze import analyze as analyze
from monoscope.data import CorpusSpec
from monoscope.harvest import ActivationStore, HarvestConfig
from monoscope.harvest import harvest as harvest
from monoscope.models import LanguageModel, load_model

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "AnalyzeConfig",
    "CorpusSpec",
    "HarvestConfig",
    "LanguageModel",
    "analyze",
    "harvest",
    "load_model",
]
