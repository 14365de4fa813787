"""search: hyperparameter search for Keras image classifiers on Optuna.

The Python API (docs/api.md):

    import search

    study = search.create_study("name", space=search.Space(suggest, build), data=arrays, ...)
    study.optimize(workers=2)
    study.best_trial, study.best_model(), study.export(), study.retrain(), study.report()
"""

__version__ = "0.1.0"

# name -> the module that defines it; imported when first used, so `import search` stays light.
_API = {
    "create_study": "search.api",
    "load_study": "search.api",
    "study_from_file": "search.api",
    "retrain": "search.api",
    "Study": "search.api",
    "Retrained": "search.api",
    "WorkersFailed": "search.api",
    "Settings": "search.settings",
    "Space": "spaces",
    "Prior": "spaces",
    "compile_model": "spaces",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
