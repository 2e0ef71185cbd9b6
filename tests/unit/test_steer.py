"""monoscope.steer: the steering hook against its formula (error term kept), the identity when a
feature is clamped to its own value (forward passes and generate with a KV cache), positions
counted through the cache, max-activation sources, the spec's JSON, and clear errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from monoscope.analyze.schema import write_meta
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as harvest
from monoscope.steer import (
    FeatureEdit,
    MaxActivations,
    Sampling,
    SteeringError,
    SteeringSpec,
    compare,
    decoder_directions,
    encode_prompt,
    from_activation_store,
    from_feature_store,
    parse_feature,
    parse_value,
    steer_features,
    steering,
)
from monoscope.testing import max_act_feature_store, tiny_sae

SITE = "blocks.1.hook_resid_post"
PROMPT = "the residual stream"


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return {arch: tiny_sae(tiny_llama, SITE, arch) for arch in ("topk", "relu", "jumprelu")}


def site_and_features(lm, sae, ids):
    """(x [P, d], f [P, n]) at the SAE's site for ids [1, P]."""
    x = lm.capture(ids, [SITE])[SITE][0]
    return x, sae.encode(x).detach()


def own_value_spec(f: torch.Tensor) -> SteeringSpec:
    """Every active feature clamped to its own value at its own position, BOS excepted."""
    edits = [
        FeatureEdit(int(i), "clamp", float(f[p, i]), positions=[p])
        for p in range(1, f.shape[0])
        for i in f[p].nonzero().flatten().tolist()
    ]
    return SteeringSpec(tuple(edits))


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_clamping_features_to_their_own_values_changes_nothing(tiny_llama, saes, arch):
    ids = encode_prompt(tiny_llama, PROMPT)
    _, f = site_and_features(tiny_llama, saes[arch], ids)
    spec = own_value_spec(f)
    assert len(spec.edits) > 2 * ids.shape[1]  # several features at every position
    clean = tiny_llama.logits(ids)
    with steering(tiny_llama, {"sae": saes[arch]}, spec):
        steered = tiny_llama.logits(ids)
    torch.testing.assert_close(steered, clean, atol=1e-5, rtol=1e-5)


def test_identity_holds_with_generate_and_its_kv_cache(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)
    options = dict(max_new_tokens=6, do_sample=False, output_logits=True)
    options.update(return_dict_in_generate=True, pad_token_id=257)
    clean = lm.model.generate(ids, **options)
    _, f = site_and_features(lm, sae, clean.sequences)  # every position, generated ones too
    with steering(lm, {"sae": sae}, own_value_spec(f)):
        steered = lm.model.generate(ids, use_cache=True, **options)
    assert torch.equal(steered.sequences, clean.sequences)
    torch.testing.assert_close(
        torch.stack(steered.logits), torch.stack(clean.logits), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_ablation_moves_x_by_exactly_minus_f_times_the_decoder_row(tiny_llama, saes, arch):
    lm, sae = tiny_llama, saes[arch]
    ids = encode_prompt(lm, PROMPT)
    x, f = site_and_features(lm, sae, ids)
    feature = int(f[1:].sum(0).argmax())  # active somewhere
    d = decoder_directions(sae, torch.tensor([feature]))[0]
    # The decoder row in raw units and the SAE's activation convention.
    row = sae.W_dec[feature] / sae.cfg.input_scale
    if sae.cfg.activation_convention == "f*||W_dec_i||":
        row = row / sae.W_dec[feature].norm()
    torch.testing.assert_close(d, row.detach())
    with steering(lm, {"sae": sae}, SteeringSpec((FeatureEdit(feature, "ablate"),))):
        edited = lm.capture(ids, [SITE])[SITE][0]
    expected = -f[:, feature, None] * d
    expected[0] = 0  # BOS is never edited
    torch.testing.assert_close(edited - x, expected, atol=1e-5, rtol=1e-4)


def test_add_and_multiply_follow_their_formulas(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)
    x, f = site_and_features(lm, sae, ids)
    feature = int(f[1:].sum(0).argmax())
    d = decoder_directions(sae, torch.tensor([feature]))[0]
    with steering(lm, {"sae": sae}, SteeringSpec((FeatureEdit(feature, "add", 3.0),))):
        added = lm.capture(ids, [SITE])[SITE][0]
    torch.testing.assert_close((added - x)[1:].norm(dim=-1), torch.full((ids.shape[1] - 1,), 3.0))
    torch.testing.assert_close((added - x)[1:] @ d / d.norm(), torch.full((ids.shape[1] - 1,), 3.0))
    with steering(lm, {"sae": sae}, SteeringSpec((FeatureEdit(feature, "multiply", 2.5),))):
        multiplied = lm.capture(ids, [SITE])[SITE][0]
    torch.testing.assert_close(
        (multiplied - x)[1:], 1.5 * f[1:, feature, None] * d, atol=1e-5, rtol=1e-4
    )


def test_several_saes_at_once(tiny_llama, saes):
    lm = tiny_llama
    ids = encode_prompt(lm, PROMPT)
    other_site = "blocks.0.hook_resid_post"
    early = tiny_sae(lm, other_site, "topk", seed=1)
    spec = SteeringSpec(
        (FeatureEdit(3, "clamp", 20.0, sae="late"), FeatureEdit(5, "add", 0.02, sae="early"))
    )
    with steering(lm, {"late": saes["topk"], "early": early}, spec, record=True) as run:
        both = lm.logits(ids)
        achieved = run.achieved()
        edited = lm.capture(ids, [SITE])[SITE][0]  # after the late SAE's edit
    assert set(achieved) == {"late", "early"}
    with steering(lm, {"late": saes["topk"]}, SteeringSpec(spec.edits[:1])):
        late_only = lm.logits(ids)
    assert not torch.allclose(both, late_only)  # the early SAE's edit propagated
    # "after" is the edited x encoded again (top-k selection included), BOS left alone.
    after = achieved["late"]["after"][0, :, 0]
    torch.testing.assert_close(after[1:], saes["topk"].encode(edited)[1:, 3].detach())
    assert torch.isnan(after[0]) and (after[1:] > 0).any()


def _generated_step_logits(lm, sae, ids, spec, new=5):
    """(sequences, per-step logits) of greedy generate with the KV cache, under `spec`."""
    with steering(lm, {"sae": sae}, spec):
        out = lm.model.generate(
            ids,
            max_new_tokens=new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=257,
            use_cache=True,
        )
    return out.sequences, torch.stack(out.logits, 1)[0]  # [new, vocab]


@pytest.mark.parametrize("where", ["prompt", "generated", "all"])
def test_positions_are_counted_through_the_kv_cache(tiny_llama, saes, where):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)
    prompt_len = ids.shape[1]
    spec = SteeringSpec((FeatureEdit(7, "clamp", 8.0, positions=where),))
    seqs, cached = _generated_step_logits(lm, sae, ids, spec)
    # The same sequence in one plain forward pass, the prompt length given: the same logits.
    with steering(lm, {"sae": sae}, spec, prompt_len=prompt_len):
        full = lm.logits(seqs)[0, prompt_len - 1 : -1]
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    clean = lm.logits(seqs)[0, prompt_len - 1 : -1]
    changed = (full - clean).abs().amax(-1) > 1e-4  # [new]
    if where == "generated":  # the first new token is predicted from the last prompt token
        assert not changed[0] and changed[1:].all()
    else:
        assert changed.all()


def test_explicit_positions_edit_only_those_tokens(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)
    x, _ = site_and_features(lm, sae, ids)
    with steering(lm, {"sae": sae}, SteeringSpec((FeatureEdit(2, "add", 1.0, positions=[3, 5]),))):
        edited = lm.capture(ids, [SITE])[SITE][0]
    moved = (edited - x).norm(dim=-1) > 1e-6
    assert moved.nonzero().flatten().tolist() == [3, 5]


def test_steer_features_shorthand(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)
    spec = SteeringSpec((FeatureEdit(1234 % sae.cfg.n_features, "clamp", 10.0),))
    with steering(lm, {"sae": sae}, spec):
        expected = lm.logits(ids)
    with steer_features(lm, sae, {1234 % sae.cfg.n_features: 10.0}):
        torch.testing.assert_close(lm.logits(ids), expected)
    maxes = MaxActivations(torch.full((sae.cfg.n_features,), 2.0), {"kind": "test"})
    with steer_features(lm, sae, {1234 % sae.cfg.n_features: "5x"}, max_acts=maxes):
        torch.testing.assert_close(lm.logits(ids), expected)


def test_compare_reports_what_happened(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    sampling = Sampling(max_new_tokens=5, temperature=1.0, seed=3, n=2)
    noop = SteeringSpec((FeatureEdit(4, "multiply", 1.0),))
    strong = SteeringSpec((FeatureEdit(4, "clamp", 20.0, positions="generated"),))
    result = compare(lm, {"sae": sae}, [noop, strong], PROMPT, sampling, labels=["1", "20"])
    json.dumps(result)  # plain JSON
    base, same, steered = result["baseline"], result["runs"][0], result["runs"][1]
    assert [s["text"] for s in same["samples"]] == [b["text"] for b in base]  # same seed
    assert max(same["samples"][0]["kl"]) < 1e-6
    sample = steered["samples"][0]
    n_positions = len(result["prompt_tokens"]) + len(sample["tokens"]) - 1
    assert len(sample["kl"]) == n_positions
    prompt_len = len(result["prompt_tokens"])
    assert max(sample["kl"][: prompt_len - 1]) < 1e-6 and sample["kl_mean_generated"] > 0
    achieved = sample["achieved"][0]
    assert achieved["feature"] == 4 and achieved["target"] == 20.0
    assert all(v is None for v in achieved["after"][:prompt_len])  # only generated positions
    assert all(v is not None for v in achieved["after"][prompt_len:])
    effects = steered["token_effects"][0]
    assert effects["feature"] == 4 and len(effects["tokens"]) == 5
    assert sample["perplexity_unsteered"] > 1


def test_spec_round_trips_through_json():
    spec = SteeringSpec(
        (
            FeatureEdit(123, "clamp", 10.0, relative=True, sae="runs/a/sae"),
            FeatureEdit(45, "add", -5, sae="runs/b/sae", positions="generated"),
            FeatureEdit(7, "multiply", 0.5, positions=[4, 2, 4]),
            FeatureEdit(8, "ablate", positions="prompt"),
        )
    )
    again = SteeringSpec.loads(spec.dumps())
    assert again == spec and again.edits[2].positions == (2, 4)
    assert spec.saes() == ["runs/a/sae", "runs/b/sae", "sae"] and spec.relative


@pytest.mark.parametrize(
    "text, expected", [("10x", (10.0, True)), ("-5", (-5.0, False)), ("2.5e1x", (25.0, True))]
)
def test_values_parse(text, expected):
    assert parse_value(text) == expected


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: parse_feature("123=ten"), "is not a number"),
        (lambda: parse_feature("abc=5"), "ID an integer"),
        (lambda: parse_feature("12"), "needs a value"),
        (lambda: FeatureEdit(3, "multiply", 2.0, relative=True), "plain factor"),
        (lambda: FeatureEdit(3, "steer", 2.0), "unknown mode"),
        (lambda: FeatureEdit(3, "clamp", None), "needs a numeric value"),
        (lambda: FeatureEdit(3, "clamp", 1.0, positions="middle"), "positions must be"),
        (lambda: SteeringSpec.loads('{"edits": [{"feature": 1, "value": 2, "x": 1}]}'), "x"),
    ],
)
def test_bad_specs_are_refused_clearly(make, message):
    with pytest.raises(SteeringError, match=message):
        make()


def test_bad_requests_are_refused_clearly(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)

    def run(spec, sae=sae, max_acts=None):
        with steering(lm, {"sae": sae}, spec, max_acts):
            lm.logits(ids)

    n = sae.cfg.n_features
    with pytest.raises(SteeringError, match=rf"feature {n} does not exist.*0\.\.{n - 1}"):
        run(SteeringSpec((FeatureEdit(n, "clamp", 1.0),)))
    with pytest.raises(SteeringError, match=r"--features-db.*--acts"):
        run(SteeringSpec((FeatureEdit(1, "clamp", 10.0, relative=True),)))
    never = MaxActivations(torch.zeros(n), {"kind": "feature_store", "path": "f.db"})
    with pytest.raises(SteeringError, match="never fired"):
        run(SteeringSpec((FeatureEdit(1, "clamp", 10.0, relative=True),)), max_acts={"sae": never})
    for change, message in [
        ({"model": "gpt2"}, "trained on model 'gpt2'"),
        ({"site": "blocks.7.hook_resid_post"}, "layer 7 out of range"),
        ({"site": "blocks.1.mlp.hook_post"}, "64 wide"),
        ({"site": None}, "names no site"),
    ]:
        other = type(sae)(replace(sae.cfg, **change))
        other.load_state_dict(sae.state_dict())
        with pytest.raises(SteeringError, match=message):
            run(SteeringSpec((FeatureEdit(1, "clamp", 1.0),)), sae=other)
    with pytest.raises(SteeringError, match="over the context length"):
        encode_prompt(lm, "x" * 250, extra=10)


def test_relative_values_scale_by_the_max_activation(tiny_llama, saes):
    lm, sae = tiny_llama, saes["topk"]
    ids = encode_prompt(lm, PROMPT)
    maxes = MaxActivations(torch.full((sae.cfg.n_features,), 0.5), {"kind": "test"})
    relative = SteeringSpec((FeatureEdit(9, "clamp", 6.0, relative=True),))
    with steering(lm, {"sae": sae}, relative, {"sae": maxes}) as run:
        a = lm.logits(ids)
    assert run.edits[0].value == 3.0 and run.edits[0].max_act == 0.5
    with steering(lm, {"sae": sae}, SteeringSpec((FeatureEdit(9, "clamp", 3.0),))):
        torch.testing.assert_close(lm.logits(ids), a)
    # add: N x max along the decoder row, as the feature at N x max would move x
    add = SteeringSpec((FeatureEdit(9, "add", 6.0, relative=True),))
    with steering(lm, {"sae": sae}, add, {"sae": maxes}) as run:
        pass
    norm = float(decoder_directions(sae, torch.tensor([9])).norm())
    assert run.edits[0].value == pytest.approx(3.0 * norm)


def test_max_activations_from_an_activation_store(
    tiny_llama, tiny_model_dirs, corpus_file, tmp_path
):
    store = harvest(
        HarvestConfig(
            model=str(tiny_model_dirs["llama"]),
            sites=[SITE],
            corpus=str(corpus_file),
            tokens=600,
            out=str(tmp_path / "acts"),
            context=32,
            progress=False,
        ),
        tiny_llama,
    )
    sae = tiny_sae(tiny_llama, SITE, "topk")
    maxes = from_activation_store(store.path, sae, max_tokens=400)
    assert maxes.source["kind"] == "acts" and maxes.source["tokens"] == 400
    rows = torch.cat([acts for acts, _ in store.rows(SITE, "train")])[:400]
    torch.testing.assert_close(maxes.values, sae.encode(rows).max(0).values.detach())
    wrong = tiny_sae(tiny_llama, "blocks.0.hook_resid_post", "topk")
    with pytest.raises(SteeringError, match=r"no site 'blocks\.0\.hook_resid_post'"):
        from_activation_store(store.path, wrong)


def test_max_activations_from_a_feature_store(saes, tmp_path):
    sae = saes["topk"]
    n = sae.cfg.n_features
    path = tmp_path / "features.db"
    conn = max_act_feature_store(path, n, complete=False)
    with pytest.raises(SteeringError, match="incomplete"):
        from_feature_store(path, sae)
    write_meta(conn, complete=True)
    conn.commit()
    maxes = from_feature_store(path, sae)
    assert maxes.of(5) == 6.0 and maxes.source == {"kind": "feature_store", "path": str(path)}
    write_meta(conn, sae={"n_features": n + 1})
    conn.commit()
    conn.close()
    with pytest.raises(SteeringError, match=f"SAE of {n + 1} features"):
        from_feature_store(path, sae)


def test_an_sae_that_normalises_each_token_is_not_steered(tiny_llama, saes, monkeypatch):
    """Its decoder directions are scaled by each token's own norm: no fixed direction is exact."""
    from monoscope.steer import check_sae

    sae = saes["topk"]
    monkeypatch.setattr(sae, "cfg", replace(sae.cfg, input_norm="layer_norm"))
    with pytest.raises(SteeringError, match="normalises each token"):
        check_sae(tiny_llama, sae)
