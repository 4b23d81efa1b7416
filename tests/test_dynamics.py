import numpy as np
import pytest

from issp.dynamics import gradient_flow, thin_telemetry


def write_telemetry(path, grad_norm: np.ndarray, loss: np.ndarray) -> None:
    steps, layers = grad_norm.shape
    np.savez_compressed(
        path,
        layers=np.array([f"layer{i}" for i in range(layers)]),
        loss=loss.astype(np.float32),
        val_steps=np.array([steps], np.int64),
        val_psnr=np.array([30.0], np.float32),
        grad_norm=grad_norm.astype(np.float32),
        flips=np.ones((steps, layers), np.float32),
        sparsity=np.full((steps, layers), 0.9, np.float32),
        kept_abs=np.ones((steps, layers), np.float32),
        selected_abs=np.full((steps, layers), 0.1, np.float32),
    )


def test_steady_gradients_have_no_variation_and_spikes_raise_it(tmp_path):
    steady, spiky = np.ones((100, 4)), np.ones((100, 4))
    spiky[::10] = 5.0  # one spike every 10 steps, in every layer
    loss = np.linspace(1.0, 0.0, 100)
    write_telemetry(tmp_path / "steady.npz", steady, loss)
    write_telemetry(tmp_path / "spiky.npz", spiky, loss)
    flow = gradient_flow(tmp_path / "steady.npz", prune_steps=51)
    assert flow.grad_cv == pytest.approx(0.0) and flow.layer_spread == pytest.approx(0.0)
    assert gradient_flow(tmp_path / "spiky.npz", prune_steps=51).grad_cv > 0.5
    # The loss at the end of the pruning stage (rows 0-49): its last 5% (rows 47-49).
    assert flow.loss_end_of_pruning == pytest.approx(loss[47:50].mean(), abs=1e-6)


def test_only_the_pruning_stage_counts(tmp_path):
    grad = np.ones((100, 2))
    grad[60:] = np.arange(40)[:, None]  # wild after Kp: the mask is frozen there
    write_telemetry(tmp_path / "t.npz", grad, np.zeros(100))
    assert gradient_flow(tmp_path / "t.npz", prune_steps=51).grad_cv == pytest.approx(0.0)


def test_layers_reached_unevenly_have_a_spread(tmp_path):
    grad = np.tile([1.0, 10.0, 100.0], (100, 1))
    write_telemetry(tmp_path / "t.npz", grad, np.zeros(100))
    assert gradient_flow(tmp_path / "t.npz", 51).layer_spread == pytest.approx(np.std([0, 1, 2]))


def test_thinned_telemetry_keeps_flip_totals_and_the_shape_of_curves(tmp_path):
    rng = np.random.default_rng(0)
    write_telemetry(tmp_path / "full.npz", rng.random((105, 3)), np.linspace(1, 0, 105))
    thin_telemetry(tmp_path / "full.npz", tmp_path / "thin.npz", every=10)
    with np.load(tmp_path / "full.npz") as full, np.load(tmp_path / "thin.npz") as thin:
        assert thin["every"] == 10 and thin["loss"].shape == (10,)
        assert thin["flips"].sum() == full["flips"][:100].sum()
        assert np.allclose(
            thin["grad_norm"], full["grad_norm"][:100].reshape(10, 10, 3).mean(1), atol=1e-3
        )
        assert list(thin["layers"]) == list(full["layers"])
