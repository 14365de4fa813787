"""Reports: one self-contained HTML page that answers, from a study, what the notebook did.

Example images and class counts; the trials as the notebook's model table; optimization
history, the top trials' learning curves, the pruned trials' intermediate values and the
parameter importances; and, for the configs retrained by `search retrain`, their test
accuracy against their validation accuracy. Plots are PNGs embedded in the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from search.budget import progress
from search.config import StudyConfig
from search.data import Dataset, load_study_data
from search.ranking import ranked_trials
from search.record import StudyRecord, TrialRecord
from search.status import describe_best, trial_note
from search.study import StudyError, load_definition

# The notebook compared its top 5 models' validation curves on one plot.
N_TOP = 5


def write_report(
    study_name: str,
    storage: optuna.storages.BaseStorage,
    out_dir: Path,
    *,
    retrained: Sequence[Path] = (),
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write `out_dir/report.html` for a study; nothing if no trial of it has started.

    Args:
        retrained: retrain `report.json` files, or directories searched for them; those of
            another study, or of a trial whose params differ from the stored one, are skipped.

    Returns:
        The path of the page.
    """
    definition = load_definition(study_name, storage, wait_seconds=0)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    # Queued trials alone (the prior's centre, baselines) are nothing to report yet.
    if all(t.state == TrialState.WAITING for t in trials):
        raise StudyError(f"study {study_name!r} has no trials yet; nothing to report")
    # The trials' very split and subsets.
    data = load_study_data(definition.data, data_dir=data_dir)
    reports = _load_retrained(retrained, study_name, trials, log)
    sections = [
        _summary(study, definition, storage, data),
        _data_section(data, reports),
        _trials_section(trials, definition, reports),
        _figure_section(
            "history",
            "Optimization history",
            _optuna_png("plot_optimization_history", study, target_name=definition.study.metric),
            "Each completed trial's value, and the best so far.",
        ),
        _figure_section(
            "curves",
            f"Learning curves of the top {N_TOP} trials",
            _png(_plot_top_curves(trials, definition)),
            "Validation accuracy and loss per epoch of the best completed trials.",
        ),
        _pruned_section(trials, definition),
        _importance_section(study),
        _retrained_section(reports),
    ]
    page = _PAGE.format(
        title=html.escape(f"search report: {study_name}"),
        style=_STYLE,
        script=_SCRIPT,
        body="\n".join(sections),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _load_retrained(
    paths: Sequence[Path], study_name: str, trials: list[FrozenTrial], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The retrain reports of this study's trials, newest last."""
    files = [p for p in paths if p.is_file()]
    files += [f for p in paths if p.is_dir() for f in sorted(p.rglob("report.json"))]
    params = {t.number: t.params for t in trials}
    reports = []
    for file in sorted(set(files), key=lambda f: f.stat().st_mtime):
        try:
            report = json.loads(file.read_text())
            exported = report["export"]["trials"][0]
            if report["study"] != study_name:
                continue
            if params.get(report["trial"]) != exported["params"]:
                log(f"skipped {file}: trial {report['trial']} of {study_name!r} has other params")
                continue
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            log(f"skipped {file}: not a retrain report ({type(e).__name__}: {e})")
            continue
        reports.append(report | {"dir": file.parent})
    return reports


def _summary(study: optuna.Study, definition: StudyConfig, storage: Any, data: Dataset) -> str:
    record = StudyRecord.of(study)
    d = definition.data
    # An image folder's images are resized and converted as they are read.
    resized = (
        f"; resized to {d.image_size[0]}x{d.image_size[1]}, {d.color_mode}" if d.image_size else ""
    )
    rows = {
        "space": definition.study.space,
        "dataset": f"{d.dataset}: {len(data.train):,} training and {len(data.val):,} validation"
        f" images (validation split {d.validation_split}, split seed {d.split_seed})" + resized,
        "metric": f"{definition.study.metric} ({definition.direction}d)",
        "sampler": record.sampler or definition.trials.sampler,
        "pruner": record.pruner or definition.trials.pruner,
        "trials": progress(study).line(definition.trials.n_trials, definition.study.metric),
        "max epochs": definition.trials.max_epochs,
        "search version": record.search_version or "?",
    }
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    best = html.escape(describe_best(study.study_name, storage))
    definition_json = html.escape(json.dumps(definition.to_dict(), indent=2))
    return (
        f'<section id="summary"><h1>Study {html.escape(study.study_name)}</h1>'
        f'<table class="facts">{table}</table><pre>{best}</pre>'
        f"<details><summary>definition</summary><pre>{definition_json}</pre></details>"
        "</section>"
    )


def _data_section(data: Dataset, reports: list[dict[str, Any]]) -> str:
    n_classes = data.num_classes
    counts = {
        "train": np.bincount(data.train.y, minlength=n_classes),
        "validation": np.bincount(data.val.y, minlength=n_classes),
    }
    # Only `search retrain` reads the test set; its confusion matrix rows count the classes.
    if reports:
        counts["test"] = np.asarray(reports[-1]["confusion_matrix"]).sum(axis=1)
    header = "".join(f"<th>{name}</th>" for name in counts)
    rows = "".join(
        f'<tr><td>{i}</td><td class="text">{html.escape(name)}</td>'
        + "".join(f"<td>{int(c[i]):,}</td>" for c in counts.values())
        + "</tr>"
        for i, name in enumerate(data.class_names)
    )
    totals = "".join(f"<td><b>{int(c.sum()):,}</b></td>" for c in counts.values())
    note = (
        ""
        if reports
        else "<p>Test counts appear once a config is retrained: only <code>search retrain"
        "</code> reads the test set.</p>"
    )
    return (
        '<section id="data"><h2>Data</h2><h3>One training image per class</h3>'
        f"{_img(_png(_plot_examples(data)), 'example images')}"
        f"<h3>Images per class</h3><table><tr><th>label</th><th>class</th>{header}</tr>"
        f"{rows}<tr><td></td><td><b>total</b></td>{totals}</tr></table>{note}</section>"
    )


def _trials_section(
    trials: list[FrozenTrial], definition: StudyConfig, reports: list[dict[str, Any]]
) -> str:
    complete = ranked_trials(trials, definition.direction)
    rank = {t.number: i for i, t in enumerate(complete, start=1)}
    # Newest retrain of each trial; test ranks among them.
    tested = {r["trial"]: r for r in reports}
    by_test = sorted(tested, key=lambda n: tested[n]["test"]["accuracy"], reverse=True)
    test_rank = {n: i for i, n in enumerate(by_test, start=1)}
    order = sorted(trials, key=lambda t: (rank.get(t.number, math.inf), t.number))
    columns = [
        "rank",
        "trial",
        "state",
        "origin",
        "val accuracy",
        "val loss",
        "best epoch",
        "lowest val loss (epoch)",
        "epochs",
        "params",
        "seconds",
        "test accuracy",
        "test loss",
        "test rank",
        "name / note",
    ]
    header = "".join(f"<th>{c}</th>" for c in columns)
    rows = []
    for t in order:
        record = TrialRecord.of(t)
        history = record.history
        best = record.best_epoch
        losses = [v for v in history.get("val_loss", []) if math.isfinite(v)]
        lowest = min(losses) if losses else None
        report = tested.get(t.number)
        cells = [
            _cell(rank.get(t.number)),
            _cell(t.number),
            f'<td class="{t.state.name.lower()}">{t.state.name}</td>',
            f'<td class="text">{html.escape(record.origin or "")}</td>',
            _cell(_at(history.get("val_accuracy"), best), ".4f"),
            _cell(_at(history.get("val_loss"), best), ".4f"),
            _cell(best),
            _cell(lowest, ".4f", f" ({history['val_loss'].index(lowest) + 1})" if losses else ""),
            _cell(record.epochs),
            _cell(record.n_params, ","),
            _cell(record.seconds, ".1f"),
            _cell(report["test"]["accuracy"] if report else None, ".4f"),
            _cell(report["test"]["loss"] if report else None, ".4f"),
            _cell(test_rank.get(t.number)),
            f"<td>{html.escape(_note(t))}</td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<section id="trials"><h2>Trials</h2><p>Validation numbers are at each trial\'s best'
        f" epoch (by {definition.study.metric}); rank among completed trials. Click a column"
        ' to sort.</p><table class="sortable"><thead><tr>'
        f"{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _pruned_section(trials: list[FrozenTrial], definition: StudyConfig) -> str:
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if not pruned:
        return _note_section("pruned", "Pruned trials", "No trial was pruned.")
    return _figure_section(
        "pruned",
        "Pruned trials",
        _png(_plot_intermediate(trials, definition)),
        f"The {definition.study.metric} each trial reported per epoch: the {len(pruned)}"
        " pruned trials in color, where the pruner stopped them, against the completed"
        " trials in grey.",
    )


def _importance_section(study: optuna.Study) -> str:
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        return _note_section(
            "importances",
            "Parameter importances",
            f"Needs at least 2 completed trials; this study has {n_complete}.",
        )
    return _figure_section(
        "importances",
        "Parameter importances",
        _optuna_png("plot_param_importances", study),
        "PED-ANOVA (Optuna's default) over the completed trials: rough with few of them."
        " Parameters that only some configs have (e.g. a fourth layer's width) count where"
        " they occur.",
    )


def _retrained_section(reports: list[dict[str, Any]]) -> str:
    if not reports:
        return _note_section(
            "retrained",
            "Retrained configs",
            "None yet: <code>search export STUDY</code>, then <code>search retrain"
            " runs/STUDY/best.json</code>, train a config again and test it once.",
        )
    rows = []
    details = []
    for r in sorted(reports, key=lambda r: r["test"]["accuracy"], reverse=True):
        trial_val = (r.get("trial_validation") or {}).get("accuracy")
        rows.append(
            "<tr>"
            + _cell(r["trial"])
            + f'<td class="text">{html.escape(r.get("baseline") or "")}</td>'
            + _cell(r["epochs"])
            + _cell(r["seed"])
            + _cell(r.get("threads"))
            + _cell(r["validation"]["accuracy"], ".4f")
            + _cell(trial_val, ".4f")
            + f"<td>{_reevaluated(r.get('reevaluation'))}</td>"
            + _cell(r["test"]["accuracy"], ".4f")
            + _cell(r["test"]["loss"], ".4f")
            + _cell(r["gap"], "+.4f")
            + _cell(r["seconds"], ".1f")
            + f"<td>{html.escape(str(r['dir']))}</td></tr>"
        )
        details.append(_retrained_details(r))
    return (
        '<section id="retrained"><h2>Retrained configs: validation against test</h2>'
        "<p>Each config trained again on the training split only (the validation split"
        " is never learned from), then evaluated once on the test set.</p>"
        f"{_img(_png(_plot_val_test(reports)), 'validation and test accuracy')}"
        '<table class="sortable"><thead><tr><th>trial</th><th>name</th><th>epochs</th>'
        "<th>seed</th><th>threads</th><th>val accuracy</th><th>trial's val accuracy</th>"
        "<th>val accuracy over other seeds</th><th>test accuracy</th><th>test loss</th>"
        "<th>val - test</th><th>seconds</th>"
        f"<th>directory</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{''.join(details)}</section>"
    )


def _retrained_details(report: dict[str, Any]) -> str:
    classes = "".join(
        f"<tr><td>{html.escape(c['name'])}</td>{_cell(c['precision'], '.4f')}"
        f"{_cell(c['recall'], '.4f')}{_cell(c['support'], ',')}</tr>"
        for c in report["classes"]
    )
    images = "".join(
        _img(base64.b64encode(path.read_bytes()).decode(), path.name)
        for path in (report["dir"] / "history.png", report["dir"] / "confusion.png")
        if path.is_file()
    )
    config = html.escape(json.dumps(report["export"]["trials"][0]["config"], indent=2))
    name = f" ({html.escape(report['baseline'])})" if report.get("baseline") else ""
    return (
        f"<h3>Trial {report['trial']}{name}: {report['epochs']} epochs, seed {report['seed']},"
        f" {report.get('threads')} threads ({html.escape(report['dir'].name)})</h3>"
        f"<p>test accuracy {report['test']['accuracy']:.4f}, validation accuracy"
        f" {report['validation']['accuracy']:.4f}; {report['n_params']:,} parameters,"
        f" trained in {report['seconds']:.0f} s</p>{_reevaluation_details(report)}"
        f'<div class="pair">{images}</div>'
        "<details><summary>precision and recall per class</summary><table><tr><th>class</th>"
        f"<th>precision</th><th>recall</th><th>test images</th></tr>{classes}</table></details>"
        f"<details><summary>config</summary><pre>{config}</pre></details>"
    )


def _reevaluated(reevaluation: dict[str, Any] | None) -> str:
    """Mean ± standard deviation of `export --reevaluate`'s seeds, or blank."""
    if not reevaluation:
        return ""
    n = len(reevaluation["seeds"])
    return f"{reevaluation['mean']:.4f} ± {reevaluation['std']:.4f} ({n} seeds)"


def _reevaluation_details(report: dict[str, Any]) -> str:
    r = report.get("reevaluation")
    if not r:
        return ""
    runs = ", ".join(
        f"seed {seed}: {acc:.4f}"
        for seed, acc in zip(r["seeds"], r[r.get("metric", "val_accuracy")], strict=True)
    )
    return (
        f"<p>Chosen by validation alone: trained again for {r['epochs']} epochs with other"
        f" seeds ({runs}), mean {r['mean']:.4f} ± {r['std']:.4f}, rank"
        f" {report['export']['trials'][0]['rank']} by that mean (rank {r['trial_rank']} by"
        " its trial's own value); only then tested.</p>"
    )


def _plot_examples(data: Dataset) -> Figure:
    """The first training image of each class, in a grid of up to 10 columns."""
    n_cols = min(10, data.num_classes)
    n_rows = math.ceil(data.num_classes / n_cols)
    fig = Figure(figsize=(1.6 * n_cols, 1.9 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel()
    for label, ax in enumerate(axes):
        ax.axis("off")
        if label >= data.num_classes:
            continue
        image = data.train.example(label)
        # Images are on a 0..255 scale, grey ones with a channel axis of 1.
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image.astype(np.uint8))
        ax.set_title(data.class_names[label], fontsize=9)
    return fig


def _plot_top_curves(trials: list[FrozenTrial], definition: StudyConfig) -> Figure:
    top = ranked_trials(trials, definition.direction)
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, key in zip(fig.subplots(1, 2), ("val_accuracy", "val_loss"), strict=True):
        for t in top[:N_TOP]:
            values = TrialRecord.of(t).history.get(key, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=_label(t))
        ax.set(xlabel="epoch", ylabel=key, title=key.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if top:
            ax.legend(fontsize=8)
    return fig


def _plot_intermediate(trials: list[FrozenTrial], definition: StudyConfig) -> Figure:
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for t in trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.state == TrialState.PRUNED:
            ax.plot(steps, values, marker="o", label=_label(t))
        elif t.state == TrialState.COMPLETE:
            ax.plot(steps, values, color="grey", alpha=0.5, linewidth=1)
    ax.set(xlabel="epoch", ylabel=definition.study.metric, title="intermediate values")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def _plot_val_test(reports: list[dict[str, Any]]) -> Figure:
    """Validation and test accuracy of each retrained config, side by side."""
    ordered = sorted(reports, key=lambda r: r["test"]["accuracy"], reverse=True)
    fig = Figure(figsize=(max(5, 1.4 * len(ordered) + 2), 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(ordered))
    for offset, key, label in ((-0.2, "validation", "validation"), (0.2, "test", "test")):
        values = [r[key]["accuracy"] for r in ordered]
        bars = ax.bar(x + offset, values, width=0.4, label=label)
        ax.bar_label(bars, fmt="%.4f", fontsize=8)
    # Retrains of one trial (other epochs, seeds, threads) differ by their directory.
    names = [
        f"#{r['trial']}"
        + (f" {r['baseline']}" if r.get("baseline") else "")
        + f"\n{r['dir'].name}"
        for r in ordered
    ]
    ax.set_xticks(x, names)
    low = min(min(r["validation"]["accuracy"], r["test"]["accuracy"]) for r in ordered)
    ax.set(ylabel="accuracy", title="test accuracy per retrained config", ylim=(low - 0.05, 1))
    ax.legend()
    return fig


def _optuna_png(name: str, study: optuna.Study, **kwargs: Any) -> str:
    """An `optuna.visualization.matplotlib` plot as a base64 PNG."""
    import matplotlib

    # No window, whatever the user's default backend: Optuna's plots use pyplot.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    # Optuna's plots switch pyplot to its ggplot style: keep that out of the other plots.
    # PED-ANOVA warns when few trials share a value; the caption says they are rough.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ax = getattr(optuna_plots, name)(study, **kwargs)
        fig = np.atleast_1d(ax).ravel()[0].figure
        fig.set_size_inches(9, 4.5)
        fig.set_layout_engine("constrained")
        png = _png(fig)
    plt.close(fig)
    return png


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(png: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def _figure_section(anchor: str, title: str, png: str, caption: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>'
        f"{_img(png, title)}</section>"
    )


def _note_section(anchor: str, title: str, note: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2><p>{note}</p></section>'


def _cell(value: Any, fmt: str = "", suffix: str = "") -> str:
    """A table cell whose sort key is the bare value (missing values sort last)."""
    if value is None:
        return '<td data-sort="">-</td>'
    return f'<td data-sort="{value}">{format(value, fmt)}{html.escape(suffix)}</td>'


def _at(values: list[float] | None, epoch: int | None) -> float | None:
    """The value after `epoch` (1-based) epochs, if there is one."""
    if not values or epoch is None or len(values) < epoch:
        return None
    return values[epoch - 1]


def _note(t: FrozenTrial) -> str:
    notes = [trial_note(t)]
    if t.state == TrialState.PRUNED:
        notes.append(f"pruned after epoch {max(t.intermediate_values, default=0)}")
    warning = TrialRecord.of(t).warning
    if warning is not None:
        notes.append(warning)
    return "; ".join(n for n in notes if n)


def _label(t: FrozenTrial) -> str:
    baseline = TrialRecord.of(t).baseline
    return f"#{t.number}" + (f" {baseline}" if baseline is not None else "")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td:last-child, th { text-align: left; }
table.facts td { text-align: left; }
table.sortable th { cursor: pointer; background: #f4f4f4; }
table.sortable th:hover { background: #e8e8e8; }
td.complete { color: #1a7f37; } td.pruned { color: #9a6700; } td.fail { color: #cf222e; }
img { max-width: 100%; display: block; margin: .5em 0; }
.pair { display: flex; gap: 1em; align-items: flex-start; }
.pair img { min-width: 0; }
td.text { text-align: left; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; }
footer { color: #777; font-size: 12px; margin-top: 3em; }
"""

# Click a header to sort by that column; again to reverse. Missing values sort last.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const sign = th.dataset.order === "asc" ? -1 : 1;
    th.dataset.order = sign === 1 ? "asc" : "desc";
    const key = (row) => {
      const cell = row.cells[column];
      const raw = cell.dataset.sort ?? cell.textContent;
      return raw === "" ? null : isNaN(Number(raw)) ? raw : Number(raw);
    };
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      return sign * (x < y ? -1 : x > y ? 1 : 0);
    });
    rows.forEach((row) => body.appendChild(row));
  });
});
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
{body}
<footer>Generated by search report at {generated}.</footer>
<script>{script}</script>
</body></html>
"""
