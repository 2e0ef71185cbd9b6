"""Model + corpus -> activation store; and the reader of stores."""

from monoscope.harvest.config import HarvestConfig
from monoscope.harvest.harvester import harvest, run
from monoscope.harvest.shards import CorruptShardError
from monoscope.harvest.store import ActivationStore, StoreError, heldout_mask

__all__ = [
    "ActivationStore",
    "CorruptShardError",
    "HarvestConfig",
    "StoreError",
    "harvest",
    "heldout_mask",
    "run",
]
