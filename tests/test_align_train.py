"""The aligner model and trainer: known relations, equivalences, and that training works."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from align.data import PairedSplits  # noqa: E402
from align.evaluate import evaluate_pairs  # noqa: E402
from align.model import Aligner, StackedMLP, build_mlp, info_nce  # noqa: E402
from align.synthetic import make_pairs  # noqa: E402
from align.train import TrainConfig, build_aligner, embed_pairs, fit_seeds, lr_at  # noqa: E402


def _splits(n=600, dim=24, seed=0, latent_noise=0.4):
    code, audio, _ = make_pairs(n, dim, dim, seed=seed, latent_noise=latent_noise)
    a, b = int(0.8 * n), int(0.9 * n)
    return PairedSplits((code[:a], audio[:a]), (code[a:b], audio[a:b]), (code[b:], audio[b:]))


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_build_mlp_layout(layers):
    mlp = build_mlp(10, hidden=8, out=4, layers=layers)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU"] * (layers - 1) + ["Linear"]
    assert mlp(torch.randn(3, 10)).shape == (3, 4)


def test_bad_architecture_is_named():
    with pytest.raises(ValueError, match="layers must be a positive integer, got 0"):
        build_mlp(10, 8, 4, 0)


def test_stacked_members_export_to_plain_mlp():
    st = StackedMLP(3, 12, 8, 5, 4)
    for s in range(3):
        st.init_member(s, torch.Generator().manual_seed(s))
    x = torch.randn(3, 16, 12)
    st.train()
    st(x), st(x)  # move the running statistics off their initial values
    st.eval()
    y = st(x)
    for s in range(3):
        mlp = build_mlp(12, 8, 5, 4)
        mlp.load_state_dict(st.member_state_dict(s))
        mlp.eval()
        torch.testing.assert_close(mlp(x[s]), y[s], atol=1e-5, rtol=1e-5)
    # in training mode too (batch statistics), member by member
    st.train()
    mlp.train()
    torch.testing.assert_close(mlp(x[2]), st(x)[2], atol=1e-5, rtol=1e-5)


def test_info_nce_known_values():
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    eye = torch.eye(8)
    perfect = info_nce(eye, eye, 0.01, "symmetric")  # orthogonal pairs, tiny tau: ~0 loss
    assert perfect.item() < 1e-6
    same = torch.ones(8, 4) / 2  # every pair equally similar: log(B)
    assert info_nce(same, same, 0.1, "symmetric").item() == pytest.approx(math.log(8), rel=1e-5)
    a2c, c2a = info_nce(z, eye[:, :4], 0.1, "audio_to_code"), info_nce(z, eye[:, :4], 0.1, "code_to_audio")
    sym = info_nce(z, eye[:, :4], 0.1, "symmetric")
    assert sym.item() == pytest.approx((a2c.item() + c2a.item()) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="loss direction must be one of"):
        info_nce(z, z, 0.1, "both")


def test_aligner_tau_learnable_or_fixed():
    fixed = Aligner(6, 7, hidden=8, out=4, layers=2, tau=0.1)
    learn = Aligner(6, 7, hidden=8, out=4, layers=2, tau=0.1, learn_tau=True)
    assert "log_tau" not in dict(fixed.named_parameters())
    assert "log_tau" in dict(learn.named_parameters())
    assert fixed.tau.item() == pytest.approx(0.1)
    loss = learn(torch.randn(5, 6), torch.randn(5, 7))
    loss.backward()
    assert learn.log_tau.grad is not None


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup=0.1, max_epochs=10)
    total = 100
    assert lr_at(0, total, cfg) == pytest.approx(0.1)
    assert lr_at(9, total, cfg) == pytest.approx(1.0)
    assert lr_at(10, total, cfg) == pytest.approx(1.0)
    assert lr_at(55, total, cfg) == pytest.approx(0.5)
    assert lr_at(99, total, cfg) < 0.01
    assert lr_at(50, total, cfg.replace(schedule="constant")) == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"loss": "both"}, "loss must be one of"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"tau": 0.001}, "tau must be at least"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"warmup": 1.5}, "warmup is a fraction"),
    ],
)
def test_train_config_errors_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change).validate()
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig().replace(hiden=3)


def test_seed_results_do_not_depend_on_stack_mates():
    data = _splits(300, 12)
    cfg = TrainConfig(hidden=16, out=8, layers=3, batch_size=32, max_epochs=3, patience=3)
    alone = fit_seeds(cfg, data, [7])[0]
    stacked = fit_seeds(cfg, data, [3, 7])[1]
    assert alone.seed == stacked.seed == 7
    for k, v in alone.state_dict.items():
        torch.testing.assert_close(v, stacked.state_dict[k], atol=1e-4, rtol=1e-4)
    assert [h["val_loss"] for h in alone.history] == pytest.approx([h["val_loss"] for h in stacked.history], rel=1e-4)


def test_early_stopping_keeps_best_epoch_and_drops_stopped_seeds():
    data = _splits(300, 12)
    # a huge learning rate makes validation loss worsen quickly: stops before max_epochs
    cfg = TrainConfig(hidden=16, out=8, layers=2, batch_size=32, max_epochs=40, patience=2, lr=0.5, warmup=0.0)
    results = fit_seeds(cfg, data, [0, 1, 2])
    for r in results:
        vals = [h["val_loss"] for h in r.history]
        assert r.epochs_run == len(vals) < 40
        assert r.best_val_loss == pytest.approx(min(vals))
        assert r.best_epoch == int(np.argmin(vals)) + 1
        assert r.epochs_run - r.best_epoch == cfg.patience
        model = build_aligner(cfg, 12, 12, r.state_dict)  # loads into the plain layout
        assert model.embed_code(torch.randn(4, 12)).shape == (4, 8)


def test_training_raises_agreement_well_above_raw():
    """Hidden relation: both modalities are different non-linear views of one latent,
    under modality-specific nuisance that dominates the raw spaces. Aligning must beat
    the raw spaces by a wide margin (seeded; values seen: CKA 0.05 -> 0.58, 10-NN
    Jaccard 0.014 -> 0.20)."""
    torch.manual_seed(0)
    data = _splits(5000, 48, seed=1, latent_noise=0.0)
    cfg = TrainConfig(hidden=128, out=32, layers=3, batch_size=128, max_epochs=30, patience=4, seed=0)
    (res,) = fit_seeds(cfg, data, [0])
    model = build_aligner(cfg, 48, 48, res.state_dict)
    zc, za = embed_pairs(model, *data.test)
    raw = evaluate_pairs(*data.test)
    aligned = evaluate_pairs(zc, za)
    assert raw["cka"] < 0.25 and raw["knn10_jaccard"] < 0.08
    assert aligned["cka"] > raw["cka"] + 0.3
    assert aligned["cka_debiased"] > raw["cka_debiased"] + 0.3
    assert aligned["knn10_jaccard"] > 2 * raw["knn10_jaccard"] + 0.05
    assert aligned["dist_spearman"] > raw["dist_spearman"] + 0.3


def test_code_and_audio_may_differ_in_dimension():
    rng = np.random.default_rng(3)
    code, audio = rng.normal(size=(200, 12)).astype(np.float32), rng.normal(size=(200, 20)).astype(np.float32)
    data = PairedSplits((code[:160], audio[:160]), (code[160:180], audio[160:180]), (code[180:], audio[180:]))
    cfg = TrainConfig(hidden=16, out=8, layers=2, batch_size=32, max_epochs=1)
    (res,) = fit_seeds(cfg, data, [0])
    zc, za = embed_pairs(build_aligner(cfg, 12, 20, res.state_dict), *data.test)
    assert zc.shape == za.shape == (20, 8)
    assert np.allclose(np.linalg.norm(zc, axis=1), 1.0, atol=1e-5)
