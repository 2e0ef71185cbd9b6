"""`LanguageModel`: a Hugging Face causal LM, its tokenizer, and its named sites."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from monoscope.models.hooks import SiteEdit, capture, patch
from monoscope.models.sites import Site, SiteResolver

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LanguageModel:
    """A causal LM with the tokenizer it was trained with and an identity for manifests.

    `name` is what the user asked for (a built-in name, a hub id or a folder); `revision`
    pins the weights (a hub commit, or the sha256 of the weight files).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    revision: str
    resolver: SiteResolver = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.resolver = SiteResolver(self.model)

    @property
    def n_layers(self) -> int:
        return self.resolver.n_layers

    @property
    def d_model(self) -> int:
        return self.resolver.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def site(self, name: str) -> Site:
        """Resolve one site name; UnknownSiteError (listing valid sites) if it does not exist."""
        return self.resolver.resolve(name)

    def sites(self) -> dict[str, int]:
        """Every site of the model with its width, in forward order."""
        return {s.name: s.width for s in self.resolver.all_sites()}

    def capture(
        self,
        input_ids: Tensor,
        sites: Sequence[str],
        attention_mask: Tensor | None = None,
        stop_early: bool = True,
    ) -> dict[str, Tensor]:
        """Activations {site: [batch, pos, d]} for input_ids [batch, pos], from one forward
        pass that stops after the deepest requested site."""
        resolved = [self.site(s) for s in sites]
        return capture(self.model, resolved, input_ids.to(self.device), attention_mask, stop_early)

    @contextmanager
    def patch(self, edits: Mapping[str, SiteEdit]) -> Iterator[None]:
        """`with lm.patch({"blocks.3.hook_resid_post": fn}): ...` runs every forward pass
        (and `generate`) with fn(activation) in place of the site's activation."""
        with patch([(self.site(name), fn) for name, fn in edits.items()]):
            yield

    def decode(self, ids: list[int] | Tensor, skip_special_tokens: bool = False) -> str:
        """The text of one sequence of token ids (a list, or a 1-D tensor)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        assert isinstance(text, str)  # one sequence decodes to one string
        return text

    def logits(self, input_ids: Tensor) -> Tensor:
        """Full forward pass: logits [batch, pos, vocab]."""
        with torch.no_grad():
            logits: Tensor = self.model(input_ids=input_ids.to(self.device), use_cache=False).logits
        return logits
