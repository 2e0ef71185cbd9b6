"""Steered against unsteered generation, with what the steering actually did.

`compare` samples continuations of one prompt with and without each steering spec, from the
same seed (so the runs draw the same random numbers and differ only by the steering), then
measures each steered text with two teacher-forced passes: the unsteered model and the steered
model (recording the edited features' activations). Greedy decoding with temperature 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from monoscope.models import LanguageModel
from monoscope.sae import SparseAutoencoder
from monoscope.steer.intervention import ResolvedEdit, max_source_text, steering
from monoscope.steer.logits import top_logit_tokens
from monoscope.steer.maxact import MaxActivations
from monoscope.steer.prompts import encode_prompt, token_texts
from monoscope.steer.spec import SteeringError, SteeringSpec


@dataclass(frozen=True)
class Sampling:
    """How continuations are drawn; recorded in every result."""

    max_new_tokens: int = 40
    temperature: float = 0.7
    """0: greedy. Otherwise plain sampling at this temperature (no top-k, no top-p)."""
    seed: int = 0
    n: int = 1
    """Continuations per run (rows of one batch; the same seed for every run)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n < 1:
            raise SteeringError("max_new_tokens and n must be at least 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SteeringError(f"temperature must be >= 0, got {self.temperature}")


def generate(lm: LanguageModel, ids: Tensor, sampling: Sampling) -> Tensor:
    """[n, P + new] token ids continuing ids [1, P] (padded after an EOS), KV cache on."""
    tokenizer = lm.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options: dict = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": pad}
    if sampling.temperature > 0:
        options.update(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0)
    else:
        options.update(do_sample=False)
    batch = ids.repeat(sampling.n, 1).to(lm.device)
    # A private RNG state: the caller's global one is left as it was.
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(sampling.seed)
        # Causal LMs mix GenerationMixin into PreTrainedModel, which itself has no `generate`.
        out: Tensor = lm.model.generate(  # type: ignore[operator]
            batch, attention_mask=torch.ones_like(batch), use_cache=True, **options
        )
    return out.cpu()


def generated_lengths(lm: LanguageModel, out: Tensor, prompt_len: int) -> list[int]:
    """Tokens generated per row, up to and including the first EOS."""
    eos = lm.tokenizer.eos_token_id
    lengths = []
    for row in out[:, prompt_len:].tolist():
        lengths.append(row.index(eos) + 1 if eos in row else len(row))
    return lengths


def _log_probs(lm: LanguageModel, seqs: Tensor) -> Tensor:
    """[n, L, vocab] float32 log-probabilities of the next token after each position."""
    return lm.logits(seqs).float().log_softmax(-1).cpu()


def _finite(values: list[float], digits: int = 5) -> list[float | None]:
    return [None if not math.isfinite(v) else round(v, digits) for v in values]


@dataclass
class _Text:
    """Sequences [n, L] of one run, their generated lengths and unsteered log-probs."""

    seqs: Tensor
    lengths: list[int]
    logp_unsteered: Tensor

    def prediction_rows(self, j: int, prompt_len: int) -> slice:
        """Positions whose next token is a generated token of row j."""
        return slice(prompt_len - 1, prompt_len - 1 + self.lengths[j])

    def targets(self, j: int, prompt_len: int) -> Tensor:
        return self.seqs[j, prompt_len : prompt_len + self.lengths[j]]


def _text(lm: LanguageModel, seqs: Tensor, prompt_len: int) -> _Text:
    return _Text(seqs, generated_lengths(lm, seqs, prompt_len), _log_probs(lm, seqs))


def _perplexity(logp: Tensor, text: _Text, j: int, prompt_len: int) -> float:
    rows, targets = text.prediction_rows(j, prompt_len), text.targets(j, prompt_len)
    nll = -logp[j, rows].gather(-1, targets[:, None]).mean()
    return float(nll.exp())


def _sample(
    lm: LanguageModel, text: _Text, j: int, prompt_len: int, logp_steered: Tensor | None = None
) -> dict:
    end = prompt_len + text.lengths[j]
    tokens = text.seqs[j, prompt_len:end]
    out = {
        "text": lm.decode(tokens, skip_special_tokens=True),
        "tokens": token_texts(lm, tokens),
        "perplexity_unsteered": _perplexity(text.logp_unsteered, text, j, prompt_len),
    }
    if logp_steered is not None:
        p = logp_steered[j, : end - 1].exp()
        kl = (p * (logp_steered[j, : end - 1] - text.logp_unsteered[j, : end - 1])).sum(-1)
        out["kl"] = _finite(kl.tolist())
        out["kl_mean_generated"] = float(kl[prompt_len - 1 :].mean())
        out["perplexity_steered"] = _perplexity(logp_steered, text, j, prompt_len)
    return out


def _achieved(edits: list[ResolvedEdit], achieved: dict, j: int, end: int) -> list[dict]:
    out = []
    for key, tensors in achieved.items():
        for column, r in enumerate(e for e in edits if e.edit.sae == key):
            before = tensors["before"][j, :end, column]
            after = tensors["after"][j, :end, column]
            out.append(
                {
                    "sae": key,
                    "feature": r.edit.feature,
                    "mode": r.edit.mode,
                    "target": r.value if r.edit.mode in ("clamp", "ablate") else None,
                    "before": _finite(before.tolist()),
                    "after": _finite(after.tolist()),
                    "mean_after": float(after.nanmean()) if after.isfinite().any() else None,
                }
            )
    return out


def _token_effects(
    lm: LanguageModel,
    saes: Mapping[str, SparseAutoencoder],
    spec: SteeringSpec,
    baseline: _Text,
    steered: _Text,
    logp_steered: Tensor,
    prompt_len: int,
    k: int,
) -> list[dict]:
    """Per edited feature: its top direct-logit tokens, their mean log-prob shift (steered -
    unsteered model, on the steered text's generated positions), and the probability mass and
    count of the token set in the baseline and the steered continuations."""
    effects = []
    for key in spec.saes():
        features = list(dict.fromkeys(e.feature for e in spec.edits if e.sae == key))
        if saes[key].cfg.d_in != lm.d_model:
            continue  # not a residual-stream SAE: no direct logit effects
        for feature, tokens in top_logit_tokens(lm, saes[key], features, k).items():
            ids = torch.tensor([t["id"] for t in tokens])
            shift, mass_s, mass_b, count_s, count_b = [], [], [], 0, 0
            for j in range(steered.seqs.shape[0]):
                rows = steered.prediction_rows(j, prompt_len)
                s, u = logp_steered[j, rows][:, ids], steered.logp_unsteered[j, rows][:, ids]
                shift.append(s - u)
                mass_s.append(s.exp().sum(-1))
                base_rows = baseline.prediction_rows(j, prompt_len)
                mass_b.append(baseline.logp_unsteered[j, base_rows][:, ids].exp().sum(-1))
                count_s += int(torch.isin(steered.targets(j, prompt_len), ids).sum())
                count_b += int(torch.isin(baseline.targets(j, prompt_len), ids).sum())
            shifts = torch.cat(shift).mean(0).tolist()
            for t, value in zip(tokens, shifts, strict=True):
                t["logprob_shift"] = value
            effects.append(
                {
                    "sae": key,
                    "feature": feature,
                    "tokens": tokens,
                    "mass_baseline": float(torch.cat(mass_b).mean()),
                    "mass_steered": float(torch.cat(mass_s).mean()),
                    "count_baseline": count_b,
                    "count_steered": count_s,
                }
            )
    return effects


def compare(
    lm: LanguageModel,
    saes: Mapping[str, SparseAutoencoder],
    specs: SteeringSpec | Sequence[SteeringSpec],
    prompt: str,
    sampling: Sampling | None = None,
    max_acts: Mapping[str, MaxActivations] | None = None,
    labels: Sequence[str | None] | None = None,
    chat: bool = False,
    top_tokens: int = 5,
) -> dict:
    """Unsteered and steered continuations of `prompt`, one steered run per spec.

    Returns (plain JSON):
      prompt, prompt_tokens [str], chat, sampling {max_new_tokens, temperature, seed, n},
      max_source: str | None (where "x max" values' max activations came from),
      baseline: [{text, tokens [str], perplexity_unsteered}] (n samples),
      runs: [{label, spec (SteeringSpec JSON), edits [{...edit, absolute_value, max_act}],
              samples: [{text, tokens, perplexity_unsteered (the steered text under the
                         unsteered model), perplexity_steered, kl [per position t: KL(steered ||
                         unsteered) of the next-token distributions after token t, over the
                         prompt and the steered continuation], kl_mean_generated,
                         achieved: [{sae, feature, mode, target, before [per position], after
                                     [per position], mean_after}]}],
              token_effects: [{sae, feature, tokens [{id, text, effect, logprob_shift}],
                               mass_baseline, mass_steered, count_baseline, count_steered}]}]
    Positions count from 0 = BOS; unedited positions have null activations.
    """
    sampling = sampling or Sampling()
    specs = [specs] if isinstance(specs, SteeringSpec) else list(specs)
    labels = list(labels) if labels is not None else [None] * len(specs)
    if len(labels) != len(specs):
        raise SteeringError("give one label per spec")
    ids = encode_prompt(lm, prompt, chat, extra=sampling.max_new_tokens)
    prompt_len = ids.shape[1]
    baseline = _text(lm, generate(lm, ids, sampling), prompt_len)
    runs = [
        _steered_run(lm, saes, spec, label, ids, sampling, max_acts, baseline, top_tokens)
        for spec, label in zip(specs, labels, strict=True)
    ]
    return {
        "prompt": prompt,
        "prompt_tokens": token_texts(lm, ids[0]),
        "chat": chat,
        "sampling": asdict(sampling),
        "max_source": max_source_text(max_acts),
        "baseline": [_sample(lm, baseline, j, prompt_len) for j in range(sampling.n)],
        "runs": runs,
    }


def _steered_run(
    lm: LanguageModel,
    saes: Mapping[str, SparseAutoencoder],
    spec: SteeringSpec,
    label: str | None,
    ids: Tensor,
    sampling: Sampling,
    max_acts: Mapping[str, MaxActivations] | None,
    baseline: _Text,
    top_tokens: int,
) -> dict:
    """One entry of `compare`'s runs for prompt ids [1, prompt_len]: generate under `spec`,
    then score the steered text again with the edits recorded, to measure what they achieved."""
    prompt_len = ids.shape[1]
    with steering(lm, saes, spec, max_acts, prompt_len) as run:
        seqs = generate(lm, ids, sampling)
    steered = _text(lm, seqs, prompt_len)
    with steering(lm, saes, spec, max_acts, prompt_len, record=True) as measured:
        logp_steered = _log_probs(lm, seqs)
    achieved = measured.achieved()
    samples = []
    for j in range(sampling.n):
        sample = _sample(lm, steered, j, prompt_len, logp_steered)
        sample["achieved"] = _achieved(run.edits, achieved, j, prompt_len + steered.lengths[j])
        samples.append(sample)
    return {
        "label": label,
        "spec": spec.to_json(),
        "edits": [r.to_json() for r in run.edits],
        "samples": samples,
        "token_effects": _token_effects(
            lm, saes, spec, baseline, steered, logp_steered, prompt_len, top_tokens
        ),
    }
