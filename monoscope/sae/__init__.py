"""monoscope.sae: sparse autoencoders (relu, topk, batchtopk, jumprelu), their files and interop.

Build one with `build_sae(SAEConfig(...))`, train it with `training_step`, save it with
`sae.save(folder)` (with checksums.json), and read any supported format back with
`load_sae(folder)`, which verifies the checksums unless `verify=False` or inside
`verification(False)`. The architectures are listed once, in monoscope/sae/registry.py.
"""

from monoscope.sae.base import SparseAutoencoder, TrainStep
from monoscope.sae.batchtopk import BatchTopKSAE
from monoscope.sae.build import build_sae
from monoscope.sae.checksums import verification
from monoscope.sae.config import SAEConfig
from monoscope.sae.convert import convert
from monoscope.sae.files import CorruptSAEError, SAEFormatError
from monoscope.sae.io import detect_format, load_sae
from monoscope.sae.jumprelu import JumpReLUSAE
from monoscope.sae.registry import ARCHITECTURES, SAE_CLASSES
from monoscope.sae.relu import ReluSAE
from monoscope.sae.saelens import export_saelens
from monoscope.sae.topk import AUXK_COEFFICIENT, TopKSAE

__all__ = [
    "ARCHITECTURES",
    "AUXK_COEFFICIENT",
    "SAE_CLASSES",
    "BatchTopKSAE",
    "CorruptSAEError",
    "JumpReLUSAE",
    "ReluSAE",
    "SAEConfig",
    "SAEFormatError",
    "SparseAutoencoder",
    "TopKSAE",
    "TrainStep",
    "build_sae",
    "convert",
    "detect_format",
    "export_saelens",
    "load_sae",
    "verification",
]
