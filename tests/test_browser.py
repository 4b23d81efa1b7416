"""The real page in headless Chromium: upload, move the slider, upscale, see the result
and, for a large image, its progress; start a live comparison, watch it update, replace it
with another, stop that.

Uses the system Chromium (Playwright's own browser download is not available here). If it
is missing the tests are skipped with the install command as the reason.
"""

import re
import shutil
from pathlib import Path

import pytest
from fixtures import bad_file, photo

from issp.catalogue import load_manifest
from webapp.model_choice import available_ratios

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and shutil.which("chromium") is None,
        reason="chromium not installed: apt-get install chromium",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed: pip install playwright"
)


@pytest.fixture(scope="module")
def page(app_server):
    url, _ = app_server
    executable = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url, wait_until="networkidle")
        page.wait_for_selector("#input-image")
        yield page
        browser.close()


def drag_slider_to(page, fraction: float) -> None:
    """Drag the ratio slider's thumb to ``fraction`` of its track, as a mouse user would."""
    track = page.locator("#ratio input[type=range]").bounding_box()
    y = track["y"] + track["height"] / 2
    page.mouse.move(track["x"] + track["width"] * 0.9, y)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * fraction, y, steps=5)
    page.mouse.up()


def test_upload_move_slider_upscale_and_see_the_result(page, app_server, tmp_path):
    _, zoo_dir = app_server
    ratios = available_ratios(load_manifest(zoo_dir / "manifest.json"), "edsr-tiny", 2, "issp")
    image = tmp_path / "in.png"
    photo(48, 40).save(image)

    page.locator("#input-image input[type=file]").set_input_files(str(image))
    # The preview changes the layout; drag only once it is in place.
    sync_api.expect(page.locator("#input-image img").first).to_be_visible(timeout=15000)
    drag_slider_to(page, 0.55)
    # On release the slider snaps to a ratio that has a checkpoint and says which.
    snapped = page.locator("#ratio input[type=range]")
    sync_api.expect(page.locator("#ratio-note")).to_contain_text("nearest available", timeout=15000)
    assert float(snapped.input_value()) in ratios

    page.locator("#run").click()
    sync_api.expect(page.locator("#compare img").first).to_be_visible(timeout=30000)
    sync_api.expect(page.locator("#summary")).to_contain_text("Checkpoint", timeout=15000)
    sync_api.expect(page.locator("#summary")).to_contain_text("output 96x80")
    sync_api.expect(page.locator("#download")).to_contain_text(".png")


def test_a_large_upscale_shows_its_progress_tile_by_tile(page, tmp_path):
    # 1 megapixel at x4 runs in 64 tiles, seconds even on a fast machine.
    image = tmp_path / "large.png"
    photo(1000, 1000).save(image)
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    sync_api.expect(page.locator("#input-image img").first).to_be_visible(timeout=15000)
    page.locator("#scale").get_by_text("x4").click()
    page.locator("#run").click()
    tiles = page.locator(".progress-level-inner").filter(has_text=re.compile(r"tile \d+ of 64"))
    sync_api.expect(tiles.first).to_be_visible(timeout=60000)
    sync_api.expect(page.locator("#summary")).to_contain_text("output 4000x4000", timeout=120000)
    sync_api.expect(tiles).to_have_count(0)


def test_a_broken_file_shows_the_library_message(page, tmp_path):
    page.locator("#input-image input[type=file]").set_input_files(
        bad_file(tmp_path, "truncated.png")
    )
    page.locator("#run").click()
    toast = page.get_by_test_id("toast-text").filter(has_text="not a readable image")
    sync_api.expect(toast.first).to_be_visible(timeout=15000)


def test_live_comparison_streams_plots_is_replaced_and_stops(page):
    page.get_by_role("tab", name="Live comparison").click()
    # Long enough to be still running when Stop is pressed on a slow machine.
    page.locator("#live-steps input").fill("200")
    page.locator("#live-train").click()
    status = page.locator("#live-status")
    sync_api.expect(status).to_contain_text("Running: step", timeout=60000)
    step = re.search(r"step (\d+) of 200", status.inner_text())[1]
    sync_api.expect(page.locator("#live-loss .js-plotly-plot")).to_be_visible(timeout=30000)
    # The step counter advances as snapshots stream in.
    sync_api.expect(status).not_to_contain_text(f"step {step} of 200", timeout=30000)
    sync_api.expect(status).to_contain_text("Running: step")

    # A second press stops the first run and starts the new one.
    page.locator("#live-steps input").fill("150")
    page.locator("#live-train").click()
    sync_api.expect(status).to_contain_text("of 150", timeout=60000)

    page.locator("#live-stop").click()
    sync_api.expect(status).to_contain_text("Stopped at step", timeout=30000)
    stopped = int(re.search(r"Stopped at step (\d+) of 150", status.inner_text())[1])
    assert stopped < 150
    sync_api.expect(page.locator("#live-download")).to_contain_text(".json")


def test_results_open_on_the_claims_with_the_study_one_click_away(page):
    page.get_by_role("tab", name="Results").click()
    sub_tabs = ["Claims", "Paired-seed study", "Zoo chart", "Zoo table", "Checkpoints"]
    for name in sub_tabs:
        sync_api.expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()
    # Claims is the page the tab opens on: the table, or the line saying none is written.
    claims = page.locator("#claims-table")
    sync_api.expect(claims).to_contain_text(re.compile("study v2", re.I), timeout=15000)
    page.get_by_role("tab", name="Paired-seed study").click()
    sync_api.expect(page.get_by_text("Does ISS-P beat IHT?")).to_be_visible()


def test_the_live_tab_states_kp_as_the_protocol_decides_it(page):
    from analysis.lockstep import LockstepConfig

    share = LockstepConfig().train_config().kp_fraction
    page.get_by_role("tab", name="Live comparison").click()
    label = f"Pruning stage Kp (steps; 0 = {share:.0%} of them)"
    sync_api.expect(page.get_by_text(label)).to_be_visible()
