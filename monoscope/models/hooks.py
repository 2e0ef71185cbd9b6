"""Reading and editing activations at named sites with forward hooks.

Capture stops the forward pass once every requested site has been seen: the layers after the
deepest site (and the unembedding) are never computed, which roughly halves the cost of
harvesting a middle layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from monoscope.models.sites import Site

SiteEdit = Callable[[Tensor], Tensor | None]
"""Takes a site's activation [batch, pos, d]; returns its replacement (same shape), or None to
leave it unchanged (a read-only hook)."""


class _StopForward(Exception):
    """Raised by a hook to abandon the forward pass once all sites are captured."""


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, new: Tensor) -> Any:
    return (new, *value[1:]) if isinstance(value, tuple) else new


def _input_tensor(args: tuple, kwargs: dict) -> Tensor:
    # Decoder layers receive hidden_states positionally in some transformers versions and by
    # keyword in others.
    return args[0] if args else kwargs["hidden_states"]


def _hook(site: Site, fn: SiteEdit) -> RemovableHandle:
    """Attach `fn` to the site's tensor; if fn returns a tensor, it replaces the activation."""
    if site.where == "output":

        def on_output(module, args, output):
            new = fn(_first(output))
            return None if new is None else _replace_first(output, new)

        return site.module.register_forward_hook(on_output)

    def on_input(module, args, kwargs):
        new = fn(_input_tensor(args, kwargs))
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return site.module.register_forward_pre_hook(on_input, with_kwargs=True)


@contextmanager
def patch(edits: Sequence[tuple[Site, SiteEdit]]) -> Iterator[None]:
    """Edit activations at sites inside a `with` block: every forward pass (generate too) sees
    `edit(activation)` in place of the activation. Hooks are removed on exit, even on error."""
    with ExitStack() as stack:
        for site, edit in edits:
            stack.callback(_hook(site, edit).remove)
        yield


def capture(
    model: torch.nn.Module,
    sites: Sequence[Site],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    stop_early: bool = True,
) -> dict[str, Tensor]:
    """Run `model` on input_ids [batch, pos] and return {site name: activation [batch, pos, d]}.

    With stop_early, the pass is abandoned right after the last requested site fires.
    """
    captured: dict[str, Tensor] = {}
    names = {s.name for s in sites}

    def recorder(site: Site) -> Callable[[Tensor], None]:
        def record(t: Tensor) -> None:
            captured[site.name] = t.detach()
            if stop_early and captured.keys() == names:
                raise _StopForward

        return record

    with patch([(s, recorder(s)) for s in sites]), torch.no_grad(), suppress(_StopForward):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    missing = names - captured.keys()
    if missing:
        raise RuntimeError(f"sites never fired during the forward pass: {sorted(missing)}")
    return captured
