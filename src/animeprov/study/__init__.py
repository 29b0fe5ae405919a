"""The subjective test (the paper's Section VIII): people judge images as drawn by an artist or generated.

- `create`: pick balanced stimuli from a split no model trained on; write them under opaque ids with
  study.json (the key, server-side only);
- `store`: every answer in SQLite (WAL) the moment it arrives;
- `app`: the FastAPI web app participants use (plain HTML/JS shipped in `static/`);
- `simulate`: synthetic participants that drive the HTTP API (never human data);
- `report`: per-participant accuracy (the paper's Table 5), per class and generator, confusion,
  Fleiss' kappa, bootstrap intervals, familiarity groups, and the model side by side.
"""
