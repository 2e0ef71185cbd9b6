"""Against the real SAELens: SAEs trained a few steps by SAELens' own trainer on random data
and saved by SAELens load in monoscope with SAELens' encode and reconstruction; monoscope's
exports load in SAELens with monoscope's. Skipped where sae-lens is not installed (CI installs
it in a separate venv: see .ci/run).
"""

import itertools

import pytest
import torch

sae_lens = pytest.importorskip(
    "sae_lens", reason="the SAELens tier needs sae-lens (installed in its own venv by .ci/run)"
)

from sae_lens import (  # noqa: E402
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

from monoscope.sae import SAEConfig, build_sae, export_saelens, load_sae  # noqa: E402

D, F, K, BATCH = 16, 64, 4, 64

TRAINED = {
    "standard": (StandardTrainingSAE, StandardTrainingSAEConfig, {"l1_coefficient": 1e-3}),
    "topk": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": K}),  # rescales by decoder norms
    "topk_plain": (
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
        {"k": K, "rescale_acts_by_decoder_norm": False},
    ),
    "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {"k": K}),
    "matryoshka": (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        {"k": K, "matryoshka_widths": [16, F]},
    ),
    "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, {"l0_coefficient": 1e-3}),
    "gated": (GatedTrainingSAE, GatedTrainingSAEConfig, {"l1_coefficient": 1e-3}),
}
NORMS = (
    "none",
    "layer_norm",
    "constant_norm_rescale",
    "expected_average_only_in",
    "covariance_whitening",
)


def activations(seed: int = 0):
    """Endless random batches [BATCH, D]: anisotropic, off-centre, of uneven norms."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=g)
    while True:
        scale = 0.5 + 3 * torch.rand(BATCH, 1, generator=g)
        yield scale * (torch.randn(BATCH, D, generator=g) @ mix) + 2.0


def rows(n: int = 48, seed: int = 9) -> torch.Tensor:
    return next(activations(seed))[:n]


def trained(name: str, norm: str, tmp_path, steps: int = 8, checkpoint: bool = False):
    """A SAELens SAE trained `steps` batches by SAELens' SAETrainer (one checkpoint midway,
    saved by SAELens under tmp_path/checkpoints)."""
    cls, cfg_cls, extra = TRAINED[name]
    torch.manual_seed(0)
    sae = cls(cfg_cls(d_in=D, d_sae=F, normalize_activations=norm, **extra))
    if name == "matryoshka" and norm in ("layer_norm", "constant_norm_rescale"):
        # Its nested decodes each undo the per-token normalisation, which SAELens 6 keeps
        # for one decode only (AttributeError: ln_std / x_norm_coeff): it cannot train one, so
        # it writes no training checkpoint; its own save still writes the finished SAE.
        if checkpoint:
            pytest.skip("SAELens 6 cannot train a matryoshka SAE with a per-token normalisation")
        with torch.no_grad():  # off the initialisation's symmetries, as training would be
            for param in sae.parameters():
                param.add_(0.1 * torch.randn_like(param))
        return sae
    trainer_cfg = SAETrainerConfig(
        total_training_samples=BATCH * steps,
        train_batch_size_samples=BATCH,
        lr=3e-3,
        lr_end=3e-3,
        n_checkpoints=1,
        checkpoint_path=str(tmp_path / "checkpoints"),
        n_batches_for_norm_estimate=2,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(trainer_cfg, sae, data_provider=activations()).fit()


def assert_same(ours, f_ref, out_ref, x, relu_norms=None):
    f = ours.encode(x)
    if relu_norms is not None:  # monoscope's relu reports f_i ||W_dec_i||
        f_ref = f_ref * relu_norms
    torch.testing.assert_close(f, f_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours(x), out_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(TRAINED))
def test_saelens_trained_and_saved_loads_exactly(name, norm, tmp_path):
    sae = trained(name, norm, tmp_path)
    sae.save_inference_model(tmp_path / "final")  # as SAELens' runner saves the result
    theirs = SAE.load_from_disk(tmp_path / "final").eval()
    ours = load_sae(tmp_path / "final")
    x = rows()
    with torch.no_grad():
        f_ref = theirs.encode(x)
        out_ref = theirs.decode(f_ref)
    norms = theirs.W_dec.norm(dim=-1).detach() if name == "standard" else None
    assert_same(ours, f_ref, out_ref, x, norms)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka", "jumprelu", "gated"])
def test_saelens_training_checkpoints_load_exactly(name, norm, tmp_path):
    """A checkpoint holds the training config and unfolded weights (batchtopk: its running
    threshold; 'expected_average_only_in' and 'covariance_whitening': the statistics its
    activation scaler saved beside it)."""
    trained(name, norm, tmp_path, checkpoint=True)
    (folder,) = [p.parent for p in (tmp_path / "checkpoints").rglob("cfg.json")]
    ours = load_sae(folder)
    scaler = ActivationScaler()  # what SAELens' trainer fed this SAE, and maps back
    scaler.load(folder / "activation_scaler.json")
    if name in ("batchtopk", "matryoshka"):
        # Its inference rule is the jumprelu SAELens saves it as: save that and read it back.
        TrainingSAE.load_from_disk(folder).save_inference_model(tmp_path / "as_saved")
        folder = tmp_path / "as_saved"
    # SAELens' inference class (a jumprelu checkpoint may hold thresholds < 0 between steps:
    # its inference class, as monoscope, ReLUs before the jump; its training class does not).
    theirs = SAE.load_from_disk(folder).eval()
    x = rows()
    with torch.no_grad():
        f_ref = theirs.encode(scaler.scale(x))
        out_ref = scaler.unscale(theirs.decode(f_ref))
    assert_same(ours, f_ref, out_ref, x)


@pytest.mark.parametrize(
    ("cls", "cfg_cls"),
    [
        (Transcoder, TranscoderConfig),
        (SkipTranscoder, SkipTranscoderConfig),
        (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig),
    ],
)
def test_saelens_transcoders_as_wide_as_their_input(cls, cfg_cls, tmp_path):
    torch.manual_seed(1)
    cfg = cfg_cls(d_in=D, d_sae=F, d_out=D, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = "blocks.2.ln2.hook_normalized"
    cfg.metadata.hook_name_out = "blocks.2.hook_mlp_out"
    theirs = cls(cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        if hasattr(theirs, "threshold"):
            theirs.threshold.copy_(torch.rand(F) * 0.5)
    theirs.save_model(tmp_path / "tc")
    ours = load_sae(tmp_path / "tc")
    assert ours.cfg.transcoder and ours.cfg.output_site == "blocks.2.hook_mlp_out"
    x = rows()
    with torch.no_grad():
        f_ref, out_ref = theirs.encode(x), theirs(x)
    norms = None if "jumprelu" in cfg.architecture() else theirs.W_dec.norm(dim=-1).detach()
    assert_same(ours, f_ref, out_ref, x, norms)


def monoscope_sae(arch: str, input_norm: str, seed: int = 0):
    """A monoscope SAE with every parameter random (input_scale != 1)."""
    k = K if arch in ("topk", "batchtopk") else None
    cfg = SAEConfig(arch=arch, d_in=D, n_features=F, k=k, input_scale=0.3, input_norm=input_norm)
    sae = build_sae(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    if arch == "batchtopk":
        sae.cfg.batchtopk_threshold = 0.05
    return sae.eval()


@pytest.mark.parametrize(
    ("arch", "input_norm"),
    list(
        itertools.product(
            ["relu", "topk", "batchtopk", "jumprelu", "gated"],
            ["none", "layer_norm", "constant_norm_rescale"],
        )
    ),
)
def test_monoscope_exports_load_in_saelens_exactly(arch, input_norm, tmp_path):
    ours = monoscope_sae(arch, input_norm)
    export_saelens(ours, tmp_path / "sl")
    theirs = SAE.load_from_disk(tmp_path / "sl").eval()
    x = rows()
    with torch.no_grad():
        f_ref = theirs.encode(x)
        out_ref = theirs.decode(f_ref)
    assert_same(ours, f_ref, out_ref, x)
