"""Which checkpoint a request resolves to (webapp.model_choice)."""

from issp.catalogue import Manifest
from webapp.model_choice import choose_model, model_options
from webapp.model_zoo import ModelZoo


def test_choose_model_accepts_family_names_and_both_method_spellings(fake_zoo):
    manifest = ModelZoo(fake_zoo).manifest()
    choice = choose_model(manifest, "EDSR", 2, "iss-p", 0.9)
    assert (choice.arch, choice.method, choice.ratio) == ("edsr-tiny", "issp", 0.9)
    assert choose_model(manifest, None, 4, "IHT", 0.0).method == "dense"


def test_model_options_snap_the_slider_and_never_raise(fake_zoo):
    manifest = ModelZoo(fake_zoo).manifest()
    options = model_options(manifest, 4, "swinir-tiny", "IHT", 0.6)
    assert options.archs == [("EDSR-style (edsr-tiny)", "edsr-tiny")]
    assert (options.arch, options.ratio) == ("edsr-tiny", 0.5)
    assert "nearest available to 0.6" in options.note
    empty = model_options(Manifest(), 2, "edsr-tiny", "ISS-P", 0.9)
    assert empty.archs == [] and empty.ratio is None
    assert empty.note.startswith("Not available: the zoo has no x2 checkpoints yet")
