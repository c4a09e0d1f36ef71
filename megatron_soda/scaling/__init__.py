"""IsoFLOP scaling-law studies, SODA's way: plan the runs, launch them, collect their final losses, fit the
compute-optimal laws and plot them (``tools/isoflop.py``).

One study is one directory (``study.py`` knows its layout); each stage reads what the previous one wrote:

- ``plan.py``: budgets x a width family (``models/isoflop.py``) -> the run table and one trainer config per run;
- ``launch.py``: runs them (one after another, several at once, under torchrun, or as a SLURM array), resumably;
- ``collect.py``: each run's final validation losses -> one results table, refusing unfinished runs;
- ``fit.py``: SODA's "approach 2" (per-budget parabolas, power laws, residual-bootstrap intervals);
- ``parametric.py``: Chinchilla's approach 3, L(N, D) = E + A/N^a + B/D^b (or why the runs cannot pin it down);
- ``predict.py``, ``report.py``: the compute-optimal run at a new budget; fit.json and its printed table;
- ``plot.py``: the parabolas, the frontiers with their bands, the loss curves;
- ``study_run.py``, ``demo_corpus.py``: every stage in one call, and the CPU demo on the shipped corpus (whose
  preparation tools/demo.py shares).
"""
