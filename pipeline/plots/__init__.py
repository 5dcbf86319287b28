"""Pictures of runs, kept apart from the loops that make them: the MAE's reconstructions
(``reconstruction``), a head run's figures (``heads``) and the report's run curves (``curves``).
Each figure is rendered to memory with matplotlib's object API or PIL and written atomically."""
