"""The web app: what ``app.py``'s tabs call, as plain functions the tests call without a
UI, and the tabs' layouts.

- ``checks``: a request's arguments checked, and errors worded for the person who sent them.
- ``files``: the app's files: which uploads may be read, the server's own folder, the
  bound on their size, the example images.
- ``model_zoo``: the zoo as a running server sees it: usable checkpoints, a bounded model
  cache, and what cannot be used and why.
- ``model_choice``: which checkpoint a request resolves to, and what the pickers offer.
- ``upscaling``: upscale an upload, or score the models on it.
- ``results``: the Results tab's text, table and chart.
- ``admission``: which live runs and sweeps may run, wait or are refused.
- ``live``: live comparisons and alpha sweeps streamed as views.
- ``stored_runs``: the zoo's stored training dynamics drawn.
- ``memory``: the allocator settings that keep a long-running server's memory flat.
- ``ui``, ``ui_upscale``, ``ui_results``, ``ui_dynamics``: the Gradio layout, one module
  per tab (and what they share), each wired to the functions above; the only modules
  here that import Gradio.
"""
