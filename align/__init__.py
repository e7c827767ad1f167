"""align: map code and audio embeddings into one space and measure how well they agree.

Stages: ``train_aligner`` (one run folder), ``run_sweep`` (grid x seeds), ``build_report``
(the study's analyses as Markdown + figures), ``rank_programs`` (order candidate programs
by predicted audio distinctness from code alone). Numeric metrics live in align.metrics
and need only numpy; training needs torch (the ``align`` extra).
"""

__version__ = "0.1.0"
