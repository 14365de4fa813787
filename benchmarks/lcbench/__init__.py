"""LCBench by simulation: the search strategy at hundreds of trials, in minutes.

`surrogate` reads YAHPO Gym's LCBench model, `space` is LCBench's space as a search space,
`simulate` runs asynchronous workers in simulated time on real Optuna studies,
`contestants` builds them, `dehb_run` runs DEHB in its own environment, `bench` runs
everything and records it, `report` turns the records into a summary and plots.
Run it as `python -m benchmarks.lcbench` (benchmarks/README.md).
"""
