"""Stage 3: temporal heads trained on cached feature sequences (Zhou et al. 2024, ABAW6).

A frame's way: store -> ``sequences`` (in memory, windows, masks, fill rule) -> ``train`` (loop,
TrainConfig) -> ``evaluate`` (whole-video inference, overlapping windows averaged) ->
``postprocess`` (chosen on validation) -> ``predict`` (submission files, ensembles). ``folds``
splits by source video, ``ablate`` runs grids x seeds; ``pipeline.plots.heads`` draws the run's
figures.
"""
