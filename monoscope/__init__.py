"""monoscope: dictionary learning on language models.

The curated public API; implementations live in the stage subpackages.
"""

from monoscope.data import CorpusSpec
from monoscope.harvest import ActivationStore, HarvestConfig
from monoscope.harvest import harvest as harvest
from monoscope.models import LanguageModel, load_model

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "CorpusSpec",
    "HarvestConfig",
    "LanguageModel",
    "harvest",
    "load_model",
]
