"""The architectures monoscope knows, listed once: `SAEConfig`, `build_sae`, the loaders, the
trainer and the CLI's --arch all read this list.

To add one: write its class (a `SparseAutoencoder` subclass with `arch`; a trainable one also
declares `training_defaults`, `sparsity`, `start_settings` and `start_from_sample`, see
monoscope/sae/training.py) and add it to `TRAINED` (or `FIXED`, for a dictionary that is only
read) below.
"""

from __future__ import annotations

from collections.abc import Callable

from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.batchtopk import BatchTopKSAE
from monoscope.sae.gated import GatedSAE
from monoscope.sae.groupmax import GroupMaxSAE
from monoscope.sae.identity import NeuronDictionary
from monoscope.sae.jumprelu import JumpReLUSAE
from monoscope.sae.relu import ReluSAE
from monoscope.sae.topk import TopKSAE

TRAINED: tuple[type[SparseAutoencoder], ...] = (ReluSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE)
"""The architectures `monoscope train` trains (in the order the CLI lists them)."""
FIXED: tuple[type[SparseAutoencoder], ...] = (NeuronDictionary, GatedSAE, GroupMaxSAE)
"""Dictionaries that are not trained, only read like an SAE."""

SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {cls.arch: cls for cls in (*TRAINED, *FIXED)}
ARCHITECTURES: tuple[str, ...] = tuple(cls.arch for cls in TRAINED)
FIXED_DICTIONARIES: tuple[str, ...] = tuple(cls.arch for cls in FIXED)


def trained_class(arch: str) -> type[SparseAutoencoder]:
    """The class of a trainable architecture; a ValueError naming the choices otherwise."""
    for cls in TRAINED:
        if cls.arch == arch:
            return cls
    raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")


def archs_where(test: Callable[[type[SparseAutoencoder]], bool]) -> str:
    """The trainable architectures whose class passes `test`, as prose ('topk and
    batchtopk'), for messages that say where an option applies."""
    names = [cls.arch for cls in TRAINED if test(cls)]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]
