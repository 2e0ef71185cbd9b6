"""The steering hook: edit features at each SAE's site, keeping the SAE's error term.

At the site, x = x_hat(f) + e with f = encode(x) and e = x - x_hat the error term. Clamping
feature i to v replaces f_i by v in the reconstruction and keeps e (Scaling Monosemanticity,
"feature steering"); decode is affine in f, so that is

    x' = x + (v - f_i(x)) d_i,        d_i = decode(f + e_i) - decode(f)  (raw units)

and clamping a feature to its current value changes nothing. Multiply and ablate are clamps to
c f_i and 0; add moves x along the unit direction d_i / ||d_i|| (see spec.py).

TopK (and BatchTopK, JumpReLU) SAEs: the edit is defined on the encoded f of the unedited x;
changing one feature does not re-run the top-k selection, so the other features keep their
values even where the clamped one would displace them. The recorded "after" activations are the
edited x encoded again, selection included: they show what the SAE reads in x'.

Positions are absolute token positions of the sequence: the hook learns how many tokens the
KV cache already holds from the model's forward call, so with `generate` (each forward sees only
the new tokens) and with plain forward passes (each sees the whole sequence) position p is the
same token. "prompt" is p < prompt_len, "generated" p >= prompt_len; prompt_len defaults to the
length of the forward pass that starts a sequence (with `generate`: the prompt). Position 0 is
never edited when it holds BOS (see prompts.py). Batches must be unpadded (equal-length rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from monoscope.models import LanguageModel, UnknownSiteError
from monoscope.models.hooks import patch
from monoscope.sae import SparseAutoencoder
from monoscope.steer.maxact import MaxActivations, describe
from monoscope.steer.prompts import bos_id
from monoscope.steer.spec import FeatureEdit, SteeringError, SteeringSpec, parse_value

_MODE_CODES = {"clamp": 0, "add": 1, "multiply": 2, "ablate": 3}


@dataclass(frozen=True)
class ResolvedEdit:
    """An edit with its value in absolute units (clamp: activation; add: raw length along the
    unit direction; multiply: factor; ablate: 0) and the max activation used, if any."""

    edit: FeatureEdit
    value: float
    max_act: float | None

    def to_json(self) -> dict:
        return {**self.edit.to_json(), "absolute_value": self.value, "max_act": self.max_act}


def _parameter(sae: SparseAutoencoder) -> Tensor:
    return next(sae.parameters())


@torch.no_grad()
def decoder_directions(sae: SparseAutoencoder, features: Tensor) -> Tensor:
    """d_i [m, d_in] in raw units: how x_hat moves per unit of reported activation of each
    feature (decode is affine, so decode(e_i) - decode(0) whatever the architecture)."""
    param = _parameter(sae)
    onehot = torch.zeros(len(features) + 1, sae.cfg.n_features, device=param.device)
    onehot[torch.arange(len(features)), features.to(param.device)] = 1.0
    decoded = sae.decode(onehot.to(param.dtype)).float()
    return decoded[:-1] - decoded[-1]


def same_model(a: str, b: str) -> bool:
    """Model names that refer to the same model (equal, or the same folder)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_sae(lm: LanguageModel, sae: SparseAutoencoder, key: str = "sae") -> str:
    """The SAE's site; SteeringError unless the SAE was made for this model and site."""
    site = sae.cfg.site
    if sae.cfg.transcoder:
        raise SteeringError(
            f"SAE {key!r} is a transcoder ({site} -> {sae.cfg.output_site}): steering writes a "
            "reconstruction back where the SAE reads, and a transcoder's output belongs elsewhere"
        )
    if sae.cfg.input_norm != "none":
        raise SteeringError(
            f"SAE {key!r} normalises each token ({sae.cfg.input_norm}), so a feature's decoder "
            "direction is scaled per token: steering by fixed directions would not be exact"
        )
    if site is None:
        raise SteeringError(f"SAE {key!r} names no site in its config: it cannot be placed")
    if sae.cfg.model is not None and not same_model(sae.cfg.model, lm.name):
        raise SteeringError(
            f"SAE {key!r} was trained on model {sae.cfg.model!r}, but the loaded model is "
            f"{lm.name!r}"
        )
    try:
        width = lm.site(site).width
    except UnknownSiteError as err:
        raise SteeringError(f"SAE {key!r} reads site {site!r}: {err}") from err
    if width != sae.cfg.d_in:
        raise SteeringError(
            f"SAE {key!r} reads {sae.cfg.d_in}-wide activations, but {site} of {lm.name} is "
            f"{width} wide"
        )
    return site


def resolve(
    spec: SteeringSpec,
    saes: Mapping[str, SparseAutoencoder],
    max_acts: Mapping[str, MaxActivations] | None = None,
) -> list[ResolvedEdit]:
    """Absolute values for every edit; SteeringError for unknown SAEs or features, or a
    multiple of a max activation with no max source."""
    resolved = []
    for edit in spec.edits:
        if edit.sae not in saes:
            raise SteeringError(f"the spec edits SAE {edit.sae!r}, not among {sorted(saes)}")
        n = saes[edit.sae].cfg.n_features
        if edit.feature >= n:
            raise SteeringError(
                f"feature {edit.feature} does not exist: SAE {edit.sae!r} has {n} features "
                f"(0..{n - 1})"
            )
        max_act = None
        if edit.relative:
            source = (max_acts or {}).get(edit.sae)
            if source is None:
                raise SteeringError(
                    f"{edit.label} is a multiple of the max activation, but no max source was "
                    f"given for SAE {edit.sae!r}: pass a feature store (--features-db) or an "
                    f"activation store (--acts), or give an absolute value"
                )
            max_act = source.of(edit.feature)
        value = 0.0 if edit.value is None else float(edit.value)  # None: ablate (FeatureEdit)
        if max_act is not None:
            value *= max_act
            if edit.mode == "add":  # the displacement of the feature at value x its max
                feature = torch.tensor([edit.feature])
                value *= float(decoder_directions(saes[edit.sae], feature).norm())
        resolved.append(ResolvedEdit(edit, value, max_act))
    return resolved


@dataclass
class _Record:
    positions: Tensor  # [t]
    before: Tensor  # [b, t, m]
    after: Tensor  # [b, t, m]


@dataclass
class SteeringRun:
    """The state of a `steering` block: absolute positions, and what the hooks recorded."""

    edits: list[ResolvedEdit]
    bos: int | None
    prompt_len: int | None = None
    record: bool = False
    offset: int = 0
    _fixed_prompt_len: bool = False
    _bos_at_zero: bool = False
    _records: dict[str, list[_Record]] = field(default_factory=dict)

    def on_forward(self, module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the whole model: where this pass starts in the sequence."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.offset = _cache_length(cache)
        if self.offset == 0:  # a new sequence
            width = None if ids is None else ids.shape[1]
            if not self._fixed_prompt_len:
                self.prompt_len = width
            self._bos_at_zero = (
                ids is not None and self.bos is not None and bool((ids[:, 0] == self.bos).all())
            )

    def positions(self, t: int, device: torch.device) -> Tensor:
        return torch.arange(self.offset, self.offset + t, device=device)

    def mask(self, edits: list[ResolvedEdit], pos: Tensor) -> Tensor:
        """[t, m] bool: where each edit applies."""
        columns = []
        for r in edits:
            where = r.edit.positions
            if where == "all":
                m = torch.ones_like(pos, dtype=torch.bool)
            elif where in ("prompt", "generated"):
                if self.prompt_len is None:
                    raise SteeringError(f"positions {where!r} need the prompt length")
                m = pos < self.prompt_len if where == "prompt" else pos >= self.prompt_len
            else:
                m = torch.isin(pos, torch.tensor(where, device=pos.device))
            columns.append(m)
        mask = torch.stack(columns, 1)
        if self._bos_at_zero:
            mask &= (pos != 0)[:, None]
        return mask

    def add_record(self, key: str, rec: _Record) -> None:
        self._records.setdefault(key, []).append(rec)

    def achieved(self) -> dict[str, dict[str, Tensor]]:
        """{sae key: {"before": [b, T, m], "after": [b, T, m]}} per position of the last
        sequence: each edited feature's activation in the unedited x and in the edited x
        (encoded again), in the order of that SAE's edits; NaN where no pass covered."""
        out = {}
        for key, records in self._records.items():
            total = max(int(r.positions.max()) + 1 for r in records)
            b, _, m = records[-1].before.shape
            before = torch.full((b, total, m), float("nan"))
            after = before.clone()
            for r in records:
                if r.before.shape[0] == b:
                    before[:, r.positions.cpu()] = r.before.float().cpu()
                    after[:, r.positions.cpu()] = r.after.float().cpu()
            out[key] = {"before": before, "after": after}
        return out


def _cache_length(cache) -> int:
    """Tokens already in a KV cache (0 for none): a Cache object, or legacy tuples."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0


class _SiteHook:
    """Applies one SAE's edits at its site (a `SiteEdit`)."""

    def __init__(
        self, run: SteeringRun, key: str, sae: SparseAutoencoder, edits: list[ResolvedEdit]
    ):
        self.run, self.key, self.sae, self.edits = run, key, sae, edits
        param = _parameter(sae)
        self.features = torch.tensor([r.edit.feature for r in edits], device=param.device)
        self.directions = decoder_directions(sae, self.features)  # [m, d]
        modes = torch.tensor([_MODE_CODES[r.edit.mode] for r in edits], device=param.device)
        self.modes = modes
        self.values = torch.tensor([r.value for r in edits], device=param.device)
        norms = self.directions.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
        # add: s / ||d_i|| per unit of d_i, so the step is s along the unit direction.
        self.add_scale = torch.where(modes == 1, self.values / norms, 0.0)
        self.needs_f = bool((modes != 1).any())

    def _encode(self, x: Tensor) -> Tensor:
        param = _parameter(self.sae)
        return self.sae.encode(x.to(param.device, param.dtype))[..., self.features].float()

    def coefficients(self, f: Tensor) -> Tensor:
        """[b, t, m] multiples of d_i to add, from the features' current values f."""
        clamp = self.values - f
        return torch.where(
            self.modes == 0,
            clamp,
            torch.where(
                self.modes == 1,
                self.add_scale.expand_as(f),
                torch.where(self.modes == 2, (self.values - 1) * f, -f),
            ),
        )

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor | None:  # x [b, t, d]
        pos = self.run.positions(x.shape[1], self.features.device)
        mask = self.run.mask(self.edits, pos)  # [t, m]
        if not mask.any():
            return None
        rows = mask.any(1)
        subset = not bool(rows.all())
        xs = x[:, rows.to(x.device)] if subset else x  # [b, t', d]
        mask = mask[rows]
        if self.needs_f or self.run.record:
            f = self._encode(xs)
        else:
            f = torch.zeros(*xs.shape[:2], len(self.edits), device=self.features.device)
        delta = (self.coefficients(f) * mask) @ self.directions  # [b, t', d]
        edited = xs + delta.to(xs.device, xs.dtype)
        if self.run.record:
            self.run.add_record(self.key, _Record(pos[rows], f, self._encode(edited)))
        if not subset:
            return edited
        out = x.clone()
        out[:, rows.to(x.device)] = edited
        return out


@contextmanager
def steering(
    lm: LanguageModel,
    saes: Mapping[str, SparseAutoencoder],
    spec: SteeringSpec,
    max_acts: Mapping[str, MaxActivations] | None = None,
    prompt_len: int | None = None,
    record: bool = False,
) -> Iterator[SteeringRun]:
    """Every forward pass of `lm` in the block (plain calls and `generate`, KV cache or not)
    runs with the spec's edits; yields the `SteeringRun` (resolved edits; with `record`, the
    edited features' activations per position, `achieved()`).

    saes: the spec's SAE keys -> SAEs. max_acts: SAE key -> max activations, needed for values
    written as multiples ("10x"). Several SAEs at one site edit in spec order.
    """
    edits = resolve(spec, saes, max_acts)
    run = SteeringRun(edits, bos_id(lm.tokenizer), prompt_len, record)
    run._fixed_prompt_len = prompt_len is not None
    hooks = {}
    for key in spec.saes():
        site = check_sae(lm, saes[key], key)
        hooks[key] = (site, _SiteHook(run, key, saes[key], [r for r in edits if r.edit.sae == key]))
    handle = lm.model.register_forward_pre_hook(run.on_forward, with_kwargs=True)
    try:
        with patch([(lm.site(site), hook) for site, hook in hooks.values()]):
            yield run
    finally:
        handle.remove()


def steer_features(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    features: Mapping[int, float | str],
    mode: str = "clamp",
    positions: str | list[int] = "all",
    max_acts: MaxActivations | None = None,
    prompt_len: int | None = None,
    record: bool = False,
):
    """`steering` for one SAE from {feature: value}; a value is a number or a string such as
    "10x" (a multiple of the max activation, from `max_acts`). Ablate ignores the values."""
    edits = []
    for feature, value in features.items():
        if mode == "ablate":
            edits.append(FeatureEdit(feature, "ablate", positions=positions))
            continue
        number, relative = parse_value(value) if isinstance(value, str) else (value, False)
        edits.append(FeatureEdit(feature, mode, number, relative, "sae", positions))
    maxes = {"sae": max_acts} if max_acts is not None else None
    return steering(lm, {"sae": sae}, SteeringSpec(tuple(edits)), maxes, prompt_len, record)


def max_source_text(max_acts: Mapping[str, MaxActivations] | None) -> str | None:
    """One line naming where the max activations came from, if any were given."""
    if not max_acts:
        return None
    return "; ".join(f"{k}: {describe(m.source)}" for k, m in max_acts.items())
