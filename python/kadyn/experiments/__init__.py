"""`kadyn-exp`: the experiment suite that redraws the paper's findings and writes a report.

One module per study (`plateau`, `alpha`, `warmup`, `hallucination`, `finetune`, `patching`),
each exposing `add_arguments`, `resolve`, `execute` (train the runs) and `analyze` (figure,
numbers and verdict from cached runs only); shared pieces: `runner` (cached, resumable, parallel
runs), `fit` (power-law fit with intervals, verdict rules), `report` (report.md), `scales` (the
smoke / cpu / gpu presets) and `options` (validated option types). Entry point: `cli.main`.
"""
