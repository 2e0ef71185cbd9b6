"""monoscope.steer: clamp, add, multiply and ablate SAE features while the model runs (the
SAE's error term kept), attribution and ablation on prompts, and feature search by prompts.

    spec = SteeringSpec((FeatureEdit(1234, "clamp", 10, relative=True),))
    with steering(lm, {"sae": sae}, spec, {"sae": maxes}):   # generate or forward passes
        ...
    result = compare(lm, {"sae": sae}, spec, "Tell me about yourself", max_acts={"sae": maxes})
    report = attribute(lm, sae, "The capital of France is", target=" Paris")

`compare`, `attribute`, `features_for_span` and `contrast` return plain JSON (their docstrings
give the shapes): the browser's steering panel and attribution view call them. The commands'
configs are in config.py; `run(cfg)` runs the command a config is for, as every stage's `run` does.
"""

from monoscope.steer.attribution import METRICS, attribute, attribution_pass, spearman
from monoscope.steer.config import AttributeConfig, FeaturesForConfig, SteerConfig
from monoscope.steer.generation import Sampling, compare, generate
from monoscope.steer.intervention import (
    ResolvedEdit,
    SteeringRun,
    check_sae,
    decoder_directions,
    resolve,
    steer_features,
    steering,
)
from monoscope.steer.logits import top_logit_tokens
from monoscope.steer.maxact import MaxActivations, from_activation_store, from_feature_store
from monoscope.steer.prompts import encode_prompt, single_token
from monoscope.steer.runner import run
from monoscope.steer.search import contrast, features_for_span
from monoscope.steer.spec import (
    MODES,
    POSITIONS,
    FeatureEdit,
    SteeringError,
    SteeringSpec,
    parse_feature,
    parse_value,
)

__all__ = [
    "METRICS",
    "MODES",
    "POSITIONS",
    "AttributeConfig",
    "FeatureEdit",
    "FeaturesForConfig",
    "MaxActivations",
    "ResolvedEdit",
    "Sampling",
    "SteerConfig",
    "SteeringError",
    "SteeringRun",
    "SteeringSpec",
    "attribute",
    "attribution_pass",
    "check_sae",
    "compare",
    "contrast",
    "decoder_directions",
    "encode_prompt",
    "features_for_span",
    "from_activation_store",
    "from_feature_store",
    "generate",
    "parse_feature",
    "parse_value",
    "resolve",
    "run",
    "single_token",
    "spearman",
    "steer_features",
    "steering",
    "top_logit_tokens",
]
