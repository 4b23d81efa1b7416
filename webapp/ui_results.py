"""The Results tab: study v2's claims, the paired-seed study, the zoo's chart and table,
and its checkpoints, each on a sub-tab of its own (one long page of them was 5,800 px
tall). Wired to :mod:`webapp.claims_view`, :mod:`webapp.study_view` and
:mod:`webapp.results`."""

from __future__ import annotations

import gradio as gr
import pandas as pd
from plotly.graph_objects import Figure

from issp.catalogue import SCORE_KEYS
from webapp.claims_view import claims_page
from webapp.results import (
    MANIFEST_COLUMNS,
    manifest_rows,
    provenance,
    results_figure,
    results_text,
)
from webapp.study_view import study_page
from webapp.ui import RAW, Server, shown_to_user

TABLE_HEIGHT = 900  # px: the zoo table scrolls within about a screen


def results_tab(server: Server, demo: gr.Blocks) -> None:
    """The Results tab: study v2's claims first, then the paired-seed study, the zoo's PSNR
    chart, its stored table, and its checkpoints (the manifest) with their provenance."""

    @shown_to_user
    def results(x_axis: str, test_set: str) -> tuple[str, str, pd.DataFrame, Figure]:
        """The stored results table, its provenance, the manifest and a PSNR chart."""
        manifest = server.zoo.manifest()
        table = results_text(server.results_path) or "*No results table written yet.*"
        rows = pd.DataFrame(manifest_rows(manifest), columns=MANIFEST_COLUMNS)
        figure = results_figure(manifest, x_axis, test_set)
        return table, provenance(manifest, server.results_path), rows, figure

    @shown_to_user
    def study(metric: str | None) -> tuple[str, Figure | None, gr.Dropdown]:
        """The paired-seed study's verdicts and figure for ``metric``, and its metrics."""
        page = study_page(server.study_path, metric)
        return page.text, page.figure, gr.Dropdown(choices=page.choices, value=page.metric)

    @shown_to_user
    def claims() -> tuple[str, gr.Plot, dict]:
        """Study v2's claims table, its forest plot (hidden until a cell is called) and each
        claim's evidence."""
        page = claims_page(server.study_path)
        return page.text, gr.Plot(page.figure, visible=page.figure is not None), page.evidence

    with gr.Tab("Results"), gr.Tabs():
        with gr.Tab("Claims"):
            claims_text = gr.Markdown(label="claims", elem_id="claims-table")
            claims_plot = gr.Plot(label="Paired differences per cell")
            with gr.Accordion(
                "Evidence per cell (paired differences, Holm-adjusted p)", open=False
            ):
                claims_evidence = gr.JSON(label="evidence by claim")
        with gr.Tab("Paired-seed study"):
            gr.Markdown("### Does ISS-P beat IHT? The paired-seed study")
            study_metric = gr.Dropdown(choices=[], value=None, label="Study test set")
            study_text = gr.Markdown(label="study verdicts")
            study_plot = gr.Plot(label="Study PSNR and paired ISS-P − IHT per seed")
        with gr.Tab("Zoo chart"):
            with gr.Row():
                x_axis = gr.Radio(
                    [("pruning ratio", "ratio"), ("non-zero weights", "nonzeros")],
                    value="ratio",
                    label="x axis",
                )
                test_set = gr.Radio(list(SCORE_KEYS), value=SCORE_KEYS[0], label="Test set")
            results_plot = gr.Plot(label="Stored PSNR")
        with gr.Tab("Zoo table"):
            # Its own scroll bar: the table has rows for every checkpoint and then some.
            results_table = gr.Markdown(label="results table", max_height=TABLE_HEIGHT)
        with gr.Tab("Checkpoints"):
            provenance_text = gr.Markdown(label="provenance")
            manifest_table = gr.Dataframe(label="Checkpoints (manifest)")

    shown = [results_table, provenance_text, manifest_table, results_plot]
    demo.load(results, [x_axis, test_set], shown, api_name="results", **RAW)
    for trigger in (x_axis.input, test_set.input):
        trigger(results, [x_axis, test_set], shown, api_visibility="private", **RAW)
    demo.load(claims, [], [claims_text, claims_plot, claims_evidence], api_name="claims", **RAW)
    study_shown = [study_text, study_plot, study_metric]
    demo.load(study, [study_metric], study_shown, api_name="study", **RAW)
    study_metric.input(study, [study_metric], study_shown, api_visibility="private", **RAW)
