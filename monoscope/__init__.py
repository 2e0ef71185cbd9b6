"""monoscope: dictionary learning on language models.

The curated public API; implementations live in the stage subpackages.
"""

from monoscope.analyze import AnalyzeConfig
from monoscope.analyze import analyze as analyze
from monoscope.data import CorpusSpec
from monoscope.evaluate import EvalConfig
from monoscope.evaluate import evaluate as evaluate
from monoscope.harvest import ActivationStore, HarvestConfig
from monoscope.harvest import harvest as harvest
from monoscope.models import LanguageModel, load_model
from monoscope.sae import SAEConfig, SparseAutoencoder, load_sae
from monoscope.train import TrainConfig
from monoscope.train import train as train

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "AnalyzeConfig",
    "CorpusSpec",
    "EvalConfig",
    "HarvestConfig",
    "LanguageModel",
    "SAEConfig",
    "SparseAutoencoder",
    "TrainConfig",
    "analyze",
    "evaluate",
    "harvest",
    "load_model",
    "load_sae",
    "train",
]
