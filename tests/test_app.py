"""app.py's layout and wiring (the tabs of webapp.ui_*): named endpoints, raw inputs, user
errors, the training line."""

import json
from pathlib import Path

import gradio as gr
import pytest
from fixtures import STUDY_COMMAND, live_request, stored_manifest, study_runs, write_stored_run

import app
from analysis.lockstep import MAX_STEPS, LockstepConfig
from analysis.plots import FIGURES
from issp import IsspError
from issp.selection import PER_LAYER
from issp.study import write_study
from webapp import ui, ui_dynamics
from webapp.admission import LiveRuns
from webapp.files import UPLOAD_REFUSED, ResultFolders
from webapp.model_zoo import ModelZoo
from webapp.upscaling import Limits


def test_app_wires_named_endpoints_and_shows_user_errors(fake_zoo, tmp_path):
    demo = app.build_app(
        ModelZoo(fake_zoo),
        Limits(),
        None,
        [],
        ResultFolders(tmp_path),
    )
    public = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"upscale", "evaluate", "results", "options"} <= set(public)
    # Uploads reach the library undecoded, so its rules and messages apply.
    assert not public["upscale"].preprocess and not public["evaluate"].preprocess
    folder = tmp_path / "uploads"
    folder.mkdir()
    inside = str(folder / "x.png")
    assert ui.upload_path({"path": inside, "orig_name": "x.png"}, [folder]) == Path(inside)
    assert ui.upload_path(inside, [folder]) == Path(inside)
    assert ui.upload_path(None, [folder]) is None
    with pytest.raises(IsspError, match=UPLOAD_REFUSED):
        ui.upload_path({"path": str(tmp_path / "x.png")}, [folder])

    @ui.shown_to_user
    def fails():
        raise IsspError("clear words")

    with pytest.raises(gr.Error, match="clear words"):
        fails()


def test_the_app_shows_a_streaming_handler_s_errors_to_the_user(live_base):
    @ui.shown_to_user
    def streams():
        yield live_request(live_base, steps=MAX_STEPS + 1)

    with pytest.raises(gr.Error, match="steps must be from 1 to 2,000, got 2001"):
        next(streams())


def test_training_events_wait_in_their_own_bounded_line(fake_zoo, tmp_path):
    demo = app.build_app(ModelZoo(fake_zoo), Limits(), None, [], ResultFolders(tmp_path))
    public = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"train_live", "stop_live", "alpha_sweep", "stored", "stored_settings"} <= set(public)
    # Never in Gradio's queue for long, so it always has room for upscaling.
    for name in ("train_live", "alpha_sweep"):
        assert public[name].concurrency_limit is None
    # The page states the line's rules as the line that keeps them words them.
    line = LiveRuns(app.TRAINING_RUNS, app.TRAINING_SLOTS).describe()
    texts = [block.value or "" for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert sum(line in text for text in texts) == 2, "on the live and the sweep tab"
    # Stop must never wait behind the run it stops.
    assert public["stop_live"].concurrency_limit is None
    assert sorted(sum(ui.FIGURE_TABS.values(), ())) == sorted(FIGURES), "every figure shown"


def test_upscale_and_evaluate_share_one_queue_of_two_server_wide(fake_zoo, tmp_path):
    demo = app.build_app(ModelZoo(fake_zoo), Limits(), None, [], ResultFolders(tmp_path))
    public = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    costly = {public[name].concurrency_id for name in ("upscale", "evaluate")}
    assert len(costly) == 1 and public["upscale"].concurrency_limit == app.CONCURRENCY == 2
    others = {
        fn.concurrency_id for name, fn in public.items() if name not in ("upscale", "evaluate")
    }
    assert not costly & others, "nothing else waits in (or adds to) the costly queue"


def test_live_and_sweep_settings_default_to_the_lockstep_config(fake_zoo, tmp_path):
    demo = app.build_app(ModelZoo(fake_zoo), Limits(), None, [], ResultFolders(tmp_path))
    public = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    defaults = LockstepConfig()
    shared = [defaults.arch, defaults.scale, defaults.ratio]
    live = [block.value for block in public["train_live"].inputs]
    assert defaults.pattern is None
    assert live == [*shared, PER_LAYER, defaults.alpha, defaults.steps, 0, defaults.seed, []]
    sweep = [block.value for block in public["alpha_sweep"].inputs]
    assert sweep[:6] == [*shared, ui_dynamics.SWEEP_STEPS, 0, defaults.seed]


def test_view_api_names_every_argument_and_return_value(fake_zoo, tmp_path):
    demo = app.build_app(ModelZoo(fake_zoo), Limits(), None, [], ResultFolders(tmp_path))
    endpoints = demo.get_api_info()["named_endpoints"]
    assert {"/upscale", "/evaluate", "/results", "/train_live", "/stored"} <= set(endpoints)
    for name, endpoint in endpoints.items():
        # An unlabelled component is listed as value_<id> or parameter_<id>.
        labels = [value["label"] for value in endpoint["parameters"] + endpoint["returns"]]
        assert all(label and not label.startswith(("value_", "parameter_")) for label in labels), (
            name,
            labels,
        )
    formats = endpoints["/upscale"]["parameters"][5]
    assert formats["parameter_default"] == "PNG"
    assert set(formats["type"]["enum"]) == {"PNG", "WebP", "JPEG"}


def test_results_tab_shows_the_paired_seed_study_or_says_there_is_none(fake_zoo, tmp_path):
    write_study(study_runs(), ["set5", "val"], STUDY_COMMAND, tmp_path)
    folders = ResultFolders(tmp_path / "out")
    for path in (tmp_path / "study.json", None):
        demo = app.build_app(ModelZoo(fake_zoo), Limits(), None, [], folders, study_path=path)
        study = next(fn.fn for fn in demo.fns.values() if fn.api_name == "study")
        text, figure, menu = study("set5")
        if path is None:
            assert "No paired-seed study yet" in text and figure is None
        else:
            assert "x2, ratio 0.9: **ISS-P ahead**" in text and len(figure.data) > 0
            assert ("Set5", "set5") in menu.choices


def test_stored_dynamics_say_how_the_served_zoo_trained_them(tmp_path):
    zoo_dir, telemetry = tmp_path / "zoo", tmp_path / "zoo" / "telemetry"
    telemetry.mkdir(parents=True)
    for method in ("issp", "iht"):
        write_stored_run(telemetry, method, 0.9)
    # Its checkpoints are not there, so the server serves none: their protocol still says.
    manifest = stored_manifest(0.9, prune_steps=4, lr=1e-3)
    (zoo_dir / "manifest.json").write_text(json.dumps(manifest.to_json()))
    folders = ResultFolders(tmp_path / "out")
    demo = app.build_app(ModelZoo(zoo_dir), Limits(), None, [], folders, telemetry)
    stored = next(fn.fn for fn in demo.fns.values() if fn.api_name == "stored")
    *figures, status = stored("edsr-tiny x2, ratio 0.9")
    assert "Kp = 4:" in status
    assert [t for t in figures[0].data if t.name == "learning rate"]


def test_importing_the_app_builds_and_serves_nothing():
    # `python app.py` and `gradio app.py` build the module-level demo; an import does not.
    assert not hasattr(app, "demo")


def test_the_kp_label_says_the_live_protocol_s_share(fake_zoo, tmp_path):
    demo = app.build_app(ModelZoo(fake_zoo), Limits(), None, [], ResultFolders(tmp_path))
    labels = [getattr(block, "label", None) or "" for block in demo.blocks.values()]
    kp_labels = {text for text in labels if text.startswith("Pruning stage Kp")}
    share = LockstepConfig().train_config().kp_fraction
    assert kp_labels == {f"Pruning stage Kp (steps; 0 = {share:.0%} of them)"} and share == 0.25
