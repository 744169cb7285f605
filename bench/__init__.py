"""logitcache benchmarks: ``python -m bench`` runs them all and writes ``bench/RESULTS.md``.

One module per question (``train_step``, ``dump_cost``, ``read_speed``, ``storage``,
``scaling``); each has a ``run(ctx) -> Section`` that measures side by side in one process and
returns markdown. Figures are ratios of medians over repeated steps after warm-up, so that a
noisy shared machine moves numerator and denominator together. Nothing here is a test: the
test suite never times anything.
"""
