"""Pytest fixtures shared by the test files; the helpers they use are in fixtures.py."""

import contextlib
from pathlib import Path

import pytest
import torch
from fixtures import make_fake_zoo, photo, tiny_lockstep, zoo_for_app

from analysis.lockstep import LockstepConfig, run_to_end
from benchmarks.load import app_process


@pytest.fixture(scope="session")
def fake_zoo(tmp_path_factory) -> Path:
    """A fake zoo shared by the whole session (it takes a few seconds to write)."""
    return make_fake_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def app_server(fake_zoo, tmp_path_factory):
    """``python app.py`` on a free port, shared by the end-to-end and browser tests.

    Yields ``(url, zoo_dir)``. Fails with the server's output if it is not up in 60 s.
    """
    zoo_dir = zoo_for_app(fake_zoo)
    log = tmp_path_factory.mktemp("app") / "app.log"
    with contextlib.ExitStack() as stack:
        try:
            url, _ = stack.enter_context(app_process(zoo_dir, log))
        except RuntimeError as err:
            pytest.fail(str(err))
        yield url, zoo_dir


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Three small smooth photos: two to train on, one held out for validation."""
    folder = tmp_path_factory.mktemp("photos")
    for seed in range(3):
        photo(64, 64, seed=seed).save(folder / f"photo{seed}.png")
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread, most of all on a busy machine; runs set
    it themselves while they live. Leaves the setting as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def issp_vs_iht(photos):
    """ISS-P (alpha 0.99) against IHT at ratio 0.9 on a tiny lockstep run: the comparison
    most analysis tests read."""
    return run_to_end(tiny_lockstep(photos, ratio=0.9, alpha=0.99))


@pytest.fixture(scope="session")
def live_base(photos) -> LockstepConfig:
    """What a live-tab user does not pick, shrunk: the photos, 8 px patches, batch 2."""
    return LockstepConfig(batch_size=2, patch=8, val_every=6, val_crop=32, data=str(photos))


@pytest.fixture
def zoo(fake_zoo):
    """The fake zoo as the server sees it (a fresh model cache per test)."""
    from webapp.model_zoo import ModelZoo

    return ModelZoo(fake_zoo)
