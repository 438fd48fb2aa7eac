"""Reproduce the paper's comparison: BWT-guided curriculum vs joint training vs model merging
(and every order when the domain count allows), at equal RL compute, over several seeds.

arms.py (arm specs, compute accounting), merge.py (task arithmetic, TIES over state dicts),
runner.py (runs the arms with the Controller), results.py / report.py / plots.py (the table,
gains, verdict and plots). Nothing here imports torch at import time except merge.py.
"""
