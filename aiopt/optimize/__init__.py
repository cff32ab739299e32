"""`aiopt optimize`: search chains of steps (distill, prune, quantize recipe and runtime) with
Optuna for the fastest artifact within a quality budget, each candidate measured as it ships.

    config.py   the frozen settings the CLI fills, and what a study must agree on
    space.py    the search space: a trial is a Chain
    study.py    Optuna storage and study (journal file in OUTDIR, or a shared URL), the OUTDIR lock
    trial.py    runs one chain with the steps of aiopt.steps, under OUTDIR/trials/NNNN/
    front.py    the Pareto front and the choice
    report.py   report.json / .md / .html and reproduce.sh
    search.py   the loop: ask, run, measure, tell; then choose, verify and write

Everything heavy is imported inside functions: `import aiopt.optimize` loads nothing large.
"""
