"""`SteeringSpec`: which features to change, how, by how much and where; plain JSON.

An edit names an SAE by a key (for the command line, the SAE's folder), a feature, a mode and a
value:

| mode     | x at the SAE's site becomes            | value                                  |
|----------|----------------------------------------|----------------------------------------|
| clamp    | x + (v - f_i(x)) d_i                   | v, the activation to clamp f_i to      |
| add      | x + s u_i                              | s, a length along the unit direction   |
| multiply | x + (c - 1) f_i(x) d_i                 | c, a plain factor                      |
| ablate   | x - f_i(x) d_i   (clamp to 0)          | none                                   |

d_i is the decoder row in raw units and in the SAE's activation convention (decode(f + e_i) -
decode(f)), u_i = d_i / ||d_i||. A value written "10x" is a multiple of the feature's maximum
activation (clamp: v = 10 max_i; add: s = 10 max_i ||d_i||, the displacement of the feature
firing at 10x its maximum). Positions: "all", "prompt", "generated", or a list of absolute token
positions; see intervention.py for how they are counted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("clamp", "add", "multiply", "ablate")
POSITIONS = ("all", "prompt", "generated")
SPEC_FORMAT = "monoscope.steering_spec"
SPEC_VERSION = 1

_VALUE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(x?)\s*$")


class SteeringError(ValueError):
    """A steering request that cannot be carried out as asked (bad spec, SAE, feature, prompt)."""


def parse_value(text: str) -> tuple[float, bool]:
    """'10x' -> (10.0, True): a multiple of the max activation; '-5' -> (-5.0, False)."""
    match = _VALUE.match(text)
    if not match:
        raise SteeringError(
            f"strength {text!r} is not a number: write an activation such as 5 or -2.5, "
            f"or a multiple of the feature's max activation such as 10x"
        )
    return float(match.group(1)), match.group(2) == "x"


@dataclass(frozen=True)
class FeatureEdit:
    """One change to one feature of one SAE."""

    feature: int
    mode: str = "clamp"
    value: float | None = None
    """clamp: the activation; add: the length along the unit decoder direction; multiply: the
    factor; ablate: None."""
    relative: bool = False
    """value is a multiple of the feature's max activation ("10x"); not for multiply."""
    sae: str = "sae"
    """Key of the SAE in the mapping the spec is applied with."""
    positions: str | tuple[int, ...] | list[int] = "all"
    """all, prompt, generated, or token positions (a list is kept as a sorted tuple)."""

    def __post_init__(self) -> None:
        if isinstance(self.feature, bool) or not isinstance(self.feature, int) or self.feature < 0:
            raise SteeringError(f"feature must be a non-negative integer id, got {self.feature!r}")
        if self.mode not in MODES:
            raise SteeringError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self._normalise_value()
        if self.mode == "multiply" and self.relative:
            raise SteeringError("multiply takes a plain factor, not a multiple of the max (10x)")
        self._normalise_positions()

    def _normalise_value(self) -> None:
        """ablate: value None (0 accepted) and never relative; other modes: a finite float."""
        if self.mode == "ablate":
            if self.value not in (None, 0):
                raise SteeringError(f"ablate takes no value (it clamps to 0), got {self.value}")
            object.__setattr__(self, "value", None)
            object.__setattr__(self, "relative", False)
            return
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise SteeringError(
                f"{self.mode} of feature {self.feature} needs a numeric value, got {self.value!r}"
            )
        if not math.isfinite(self.value):
            raise SteeringError(f"value of feature {self.feature} must be finite")
        object.__setattr__(self, "value", float(self.value))

    def _normalise_positions(self) -> None:
        """A named range as it is; a list of token positions as a sorted tuple without repeats."""
        positions = self.positions
        if isinstance(positions, list | tuple):
            if not positions or not all(
                isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions
            ):
                raise SteeringError(
                    f"positions must be {', '.join(POSITIONS)} or a non-empty list of token "
                    f"positions >= 0, got {positions!r}"
                )
            object.__setattr__(self, "positions", tuple(sorted(set(positions))))
        elif positions not in POSITIONS:
            raise SteeringError(
                f"positions must be {', '.join(POSITIONS)} or a list of token positions, "
                f"got {positions!r}"
            )

    @property
    def label(self) -> str:
        """Short text such as 'clamp 123 = 10x'."""
        if self.mode == "ablate":
            return f"ablate {self.feature}"
        value = f"{self.value:g}{'x' if self.relative else ''}"
        return f"{self.mode} {self.feature} {'*' if self.mode == 'multiply' else '='} {value}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.positions, tuple):
            d["positions"] = list(self.positions)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureEdit:
        if not isinstance(d, dict):
            raise SteeringError(f"a steering edit is a JSON object, got {d!r}")
        known = {"feature", "mode", "value", "relative", "sae", "positions"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SteeringError(f"unknown keys {unknown} in steering edit; known: {sorted(known)}")
        if "feature" not in d:
            raise SteeringError(f"steering edit {d} has no feature")
        return cls(**d)


@dataclass(frozen=True)
class SteeringSpec:
    """Edits applied together; several features and several SAEs at once."""

    edits: tuple[FeatureEdit, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", tuple(self.edits))
        seen = set()
        for edit in self.edits:
            key = (edit.sae, edit.feature, edit.positions)
            if key in seen:
                raise SteeringError(
                    f"feature {edit.feature} of SAE {edit.sae!r} is edited twice at the same "
                    f"positions ({edit.positions})"
                )
            seen.add(key)

    @property
    def relative(self) -> bool:
        """Some value is a multiple of a max activation."""
        return any(e.relative for e in self.edits)

    def saes(self) -> list[str]:
        """SAE keys in first-use order."""
        return list(dict.fromkeys(e.sae for e in self.edits))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "edits": [e.to_json() for e in self.edits],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SteeringSpec:
        if not isinstance(d, dict) or d.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise SteeringError(f"not a steering spec (format {SPEC_FORMAT!r}): {d!r}")
        if d.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise SteeringError(
                f"steering spec version {d.get('version')}; this monoscope reads {SPEC_VERSION}"
            )
        edits = d.get("edits")
        if not isinstance(edits, list):
            raise SteeringError("a steering spec needs a list of edits")
        return cls(tuple(FeatureEdit.from_json(e) for e in edits))

    @classmethod
    def loads(cls, text: str) -> SteeringSpec:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as err:
            raise SteeringError(f"steering spec is not valid JSON: {err}") from err


def parse_feature(
    text: str,
    mode: str = "clamp",
    sae: str = "sae",
    positions: str = "all",
    default: tuple[float, bool] | None = None,
) -> FeatureEdit:
    """A command-line feature: '123=10x' or '45=-5'; a bare '7' for ablate, or when `default`
    ((value, relative), e.g. a sweep's) supplies the value."""
    ident, sep, value = text.partition("=")
    try:
        feature = int(ident)
    except ValueError:
        raise SteeringError(
            f"feature {text!r}: expected ID=VALUE such as 123=10x or 45=-5 (ID an integer)"
        ) from None
    if mode == "ablate":
        if sep:
            raise SteeringError(f"feature {text!r}: ablate takes no value, write {feature}")
        return FeatureEdit(feature, "ablate", sae=sae, positions=positions)
    if not sep:
        if default is None:
            raise SteeringError(f"feature {text!r} needs a value for {mode}: write {feature}=VALUE")
        return FeatureEdit(feature, mode, default[0], default[1], sae, positions)
    number, relative = parse_value(value)
    return FeatureEdit(feature, mode, number, relative, sae, positions)


def with_value(spec: SteeringSpec, value: float, relative: bool) -> SteeringSpec:
    """The spec with every non-ablate edit's value replaced (a sweep step)."""
    edits = []
    for e in spec.edits:
        if e.mode == "ablate":
            edits.append(e)
        else:
            edits.append(FeatureEdit(e.feature, e.mode, value, relative, e.sae, e.positions))
    return SteeringSpec(tuple(edits))
