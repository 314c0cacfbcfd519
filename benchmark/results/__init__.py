"""From run directories to the tables, plots and regression signal people publish.

load       run directories -> one tidy DataFrame (corrupt lines skipped with a warning)
selection  model selection strategies (training-domain validation, leave-one-env-out,
           test-domain oracle, last checkpoint), after DomainBed's model_selection.py
aggregate  selected values per trial -> mean +- standard error, average and worst env
render     Markdown, LaTeX (booktabs), CSV and HTML tables
plots      seaborn figures (matplotlib's Agg backend)
report     the self-contained HTML report; ``demo_summary`` for ``make demo``
compare    a baseline against a current set of results, Welch's t-test per cell

Heavy libraries (pandas, seaborn, scipy) are imported inside these modules, never by
``benchmark`` itself, so the CLI starts fast.
"""
