"""The explorer's pages: server-rendered HTML (no scripts, no assets from anywhere), plots as inline SVG.

Each function takes a :class:`~raymem.explorer.state.RunSource` (and the request's choices) and returns the page's
HTML; numbers are shown as the reads return them (intervals to 4 decimals), links carry the run's prefix.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from urllib.parse import urlencode

import numpy as np

from raymem.explorer.state import MemQuery, RunSource

__all__ = ["page", "runs_index", "compare_page", "overview", "memorization", "train_example", "test_example",
           "pairs_page", "trials_page", "convergence_svg", "REFRESH_SECONDS", "DRIVER_SECONDS"]

#: The overview reloads itself this often, so a training run's count moves without a reload by hand.
REFRESH_SECONDS = 5
#: The driver's lease and job state are asked at most this often (a detached job's is a call to its cluster).
DRIVER_SECONDS = 10.0

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}nav a{margin-right:1em}
table{border-collapse:collapse;font-size:0.9em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}img.t{width:32px;height:32px;image-rendering:pixelated}
.note{color:#666}pre{background:#f8f8f8;padding:0.5em;max-height:20em;overflow:auto}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def page(title: str, body: str, prefix: str | None = None, refresh: int | None = None) -> str:
    """A whole page: title, the run's navigation, the body."""
    nav = ""
    if prefix is not None:
        links = [("", "Overview"), ("memorization", "Memorization"), ("pairs", "Pairs"), ("trials", "Trials")]
        nav = "<nav><a href='/'>Runs</a>" + "".join(f"<a href='{prefix}{p}'>{t}</a>" for p, t in links) + "</nav>"
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{nav}<h1>{esc(title)}</h1>{body}</body></html>")


def table(headings: list[str], rows: list[list[str]], left: int = 0) -> str:
    """An HTML table; ``left`` first columns are text (left-aligned), cells are HTML already."""
    head = "".join(f"<th class='{'l' if i < left else ''}'>{esc(h)}</th>" for i, h in enumerate(headings))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{c}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def runs_index(sources: list[RunSource]) -> str:
    rows = [[f"<a href='/run/{k}/'>{esc(s.run.info.name)}</a>", esc(s.run.uri), num(s.run.trials_done)]
            for k, s in enumerate(sources)]
    more = "<p><a href='/compare'>Compare the runs</a> (Fig. C.2)</p>" if len(sources) > 1 else ""
    return page("raymem runs", table(["run", "directory", "trials"], rows, left=2) + more)


def compare_page(sources: list[RunSource], reference: int = 0) -> str:
    """Consistency of every other run with the reference run: Jaccard and mean |difference| against the threshold,
    for memorization and influence (``raymem compare``'s curves, supplement Fig. C.2), drawn and tabulated."""
    import tempfile
    from pathlib import Path

    from raymem.paper import compare as comparing
    from raymem.paper import figures

    if len(sources) < 2:
        return page("compare", "<p class='note'>Serve two runs or more to compare them.</p>")
    ref = sources[reference]
    views = [s.current() for s in sources]
    names = [f"{k}: {v.info.name}" for k, v in enumerate(views)]
    with ref.lock:
        curves = {names[k]: comparing.compare_runs(views[reference].counts, v.counts)
                  for k, v in enumerate(views) if k != reference}
    legend = {names[k]: {"architecture": v.info.config.get("model"),
                         "test_accuracy": figures.mean_test_accuracy(v.counts)} for k, v in enumerate(views)}
    with tempfile.TemporaryDirectory() as folder:
        out = figures.comparison_figure(names[reference], curves, Path(folder) / "compare.png", legend=legend)
        figure = base64.b64encode(Path(out).read_bytes()).decode()  # the very figure `raymem compare` draws
    svg = f"<img alt='consistency curves' src='data:image/png;base64,{figure}'>"
    choose = " ".join(f"<a href='/compare?ref={k}'>{esc(n)}</a>" for k, n in enumerate(names))
    rows = [[esc(name), esc(r["quantity"]), num(r["threshold"], 2), num(r["jaccard"]), num(r["mean_abs_diff"])]
            for name, curve in curves.items() for r in curve.to_pylist()]
    body = (f"<p>against <b>{esc(names[reference])}</b>; reference: {choose}</p>{svg}"
            + table(["run", "quantity", "threshold", "Jaccard", "mean |difference|"], rows, left=2))
    return page("compare", body)


def overview(source: RunSource, prefix: str) -> str:
    """Config, trials done / planned, throughput and ETA, the convergence numbers and curves; reloads itself."""
    from raymem.paper.tensorboard import trials_per_hour

    run, status = source.run, source.status()
    info = run.info
    done, planned = status["trials_done"], status.get("trials_target")
    finished = [t.timestamp() for t in source.trials().column("finished").to_pylist() if t is not None]
    rate = trials_per_hour(finished)
    eta = f"{max(0, planned - done) / rate:.1f} h" if rate and planned else "-"
    mem, split = status["mem"], status["split_half"]["mem"]["0.25"]
    facts = [("trials done", f"<span id='trials-done'>{done}</span> of {esc(planned)} planned"),
             ("throughput", f"{num(rate, 1)} trials/h, ETA {eta}" if rate else "- (no finish times in the log)"),
             ("examples", f"{info.n_train} training, {info.n_test} test, subsets of {info.subset_size}"),
             ("error bars", f"{esc(status['method'])}, delta {status['delta']:g}"),
             ("median / max half-width", f"{num(mem['median_halfwidth'])} / {num(mem['max_halfwidth'])}"),
             (f"certified (mem_lo &ge; {mem['certify_threshold']:g})", num(mem["certified"])),
             (f"estimated mem &ge; {mem['certify_threshold']:g}", num(mem["estimated_above"])),
             ("split-half Jaccard at 0.25", num(split.get("jaccard"))),
             ("trials still needed for the target", esc(mem.get("more_trials_needed") or "-"))]
    facts.append(("driver", source.every(DRIVER_SECONDS, "driver", lambda: _driver_text(run))))
    if status.get("canaries"):
        c = status["canaries"]
        facts.append(("canary recall", f"{num(c['recall'])} of {c['count']} flipped (chance {num(c['chance'])})"))
    body = table(["", ""], [[k, v] for k, v in facts], left=1)
    body += f"<h2>Convergence</h2>{convergence_svg(source)}"
    body += f"<h2>Config</h2><pre>{esc(json.dumps(info.config, indent=2, default=str))}</pre>"
    body += f"<p class='note'>This page reloads every {REFRESH_SECONDS} s; counts from {esc(run.uri)}.</p>"
    return page(f"{info.name}: overview", body, prefix, refresh=REFRESH_SECONDS)


def _driver_text(run) -> str:
    """Who trains the run: its driver's lease and a detached job's state (what ``raymem status`` shows)."""
    from raymem.driver.detached import job_state
    from raymem.driver.lease import driver_state

    driver, job = driver_state(run.store), job_state(run.store)
    text = "none"
    if driver is not None:
        text = (f"pid {esc(driver.get('pid'))} on {esc(driver.get('host'))}, "
                f"{'live' if driver.get('live') else 'gone'} (heartbeat {driver.get('heartbeat_age_s')} s ago)")
    if job is not None:
        text += f"; job {esc(job.get('job_id'))}: {esc(job.get('state', '?'))}"
    return text


def convergence_svg(source: RunSource) -> str:
    """Median and max half-width, certified examples and split-half Jaccard against trials, as inline SVG."""
    curve = source.curve()
    if curve.num_rows == 0:
        return "<p class='note'>No trials yet.</p>"

    def draw(view):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        c = curve.to_pydict()
        fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
        axes[0].plot(c["trials"], c["median_halfwidth"], label="median")
        axes[0].plot(c["trials"], c["max_halfwidth"], label="max")
        axes[0].set_title("memorization half-width")
        axes[0].legend()
        axes[1].plot(c["trials"], c["certified"])
        axes[1].set_title("certified examples")
        axes[2].plot(c["trials"], c["split_jaccard"])
        axes[2].set_title("split-half Jaccard (0.25)")
        for ax in axes:
            ax.set_xlabel("trials")
        fig.tight_layout()
        out = io.StringIO()
        fig.savefig(out, format="svg")
        plt.close(fig)
        text = out.getvalue()
        return text[text.index("<svg"):]

    return source.cached("convergence.svg", draw)


def _thumb(source: RunSource, split: str, index: int, prefix: str) -> str:
    train, test, _why = source.images()
    if (train if split == "train" else test) is None:
        return ""
    return f"<img class='t' loading='lazy' alt='{split} {index}' src='{prefix}image/{split}/{index}.png'>"


def _images_note(source: RunSource) -> str:
    why = source.images()[2]
    return f"<p class='note'>No thumbnails: {esc(why)}; examples are shown by index.</p>" if why else ""


def memorization(source: RunSource, prefix: str, query: MemQuery) -> str:
    """One page of training examples, sorted and filtered, each linking to its page."""
    rows, total = source.memorization(query)
    has_names = "label_name" in rows.column_names
    cells = []
    for r in rows.to_pylist():
        i = r["train_index"]
        cells.append([_thumb(source, "train", i, prefix), f"<a href='{prefix}train/{i}'>{i}</a>",
                      esc(r.get("label_name") if has_names else r.get("label", "-")),
                      num(r["mem"]), f"[{num(r['mem_lo'])}, {num(r['mem_hi'])}]", num(r["n_in"]), num(r["n_out"]),
                      num(r.get("label_flipped")) if "label_flipped" in r else "-"])
    headings = ["", "train index", "label", "mem", "interval", "n_in", "n_out", "flipped"]
    params = {k: v for k, v in {"sort": query.sort, "order": "desc" if query.descending else "asc",
                                "klass": query.klass, "certified": 1 if query.certified else None,
                                "flipped": 1 if query.flipped else None, "min_mem": query.min_mem,
                                "max_mem": query.max_mem, "per_page": query.per_page}.items() if v is not None}
    pages = max(1, -(-total // query.per_page))

    def link(page_no: int, text: str) -> str:
        return f"<a href='{prefix}memorization?{urlencode({**params, 'page': page_no})}'>{text}</a>"

    nav = (f"<p>{total} examples, page {query.page + 1} of {pages} "
           + (link(query.page - 1, "&larr; previous") + " " if query.page > 0 else "")
           + (link(query.page + 1, "next &rarr;") if query.page + 1 < pages else "") + "</p>")
    sorts = " ".join(f"<a href='{prefix}memorization?{urlencode({**params, 'sort': k, 'order': o, 'page': 0})}'>"
                     f"{k} {'&darr;' if o == 'desc' else '&uarr;'}</a>"
                     for k in ("mem", "mem_lo", "halfwidth", "train_index") for o in ("desc", "asc"))
    form = (f"<form method='get' action='{prefix}memorization'>class <input name='klass' size='4' "
            f"value='{esc(query.klass if query.klass is not None else '')}'> mem from <input name='min_mem' size='5' "
            f"value='{esc(query.min_mem if query.min_mem is not None else '')}'> to <input name='max_mem' size='5' "
            f"value='{esc(query.max_mem if query.max_mem is not None else '')}'> <label><input type='checkbox' "
            f"name='certified' value='1'{' checked' if query.certified else ''}> certified</label> <label><input "
            f"type='checkbox' name='flipped' value='1'{' checked' if query.flipped else ''}> flipped canaries"
            f"</label> <input type='hidden' name='sort' value='{esc(query.sort)}'><input type='hidden' name='order' "
            f"value='{params['order']}'><button>filter</button></form>")
    body = form + f"<p>sort by {sorts}</p>" + _images_note(source) + nav + table(headings, cells, left=3) + nav
    return page(f"{source.run.info.name}: memorization", body, prefix)


def _influence_rows(source: RunSource, prefix: str, rows, link_to: str, fdr: float | None) -> list[list[str]]:
    """One row per pair: rank, thumbnail, the other example's link, infl, its interval, mem (and with ``fdr`` the
    pair's q-value where ``raymem pairs --fdr`` selects it, else "-")."""
    q_values = {}
    if fdr is not None:
        selected = source.pairs(fdr)
        q_values = dict(zip(zip(selected.column("train_index").to_pylist(), selected.column("test_index").to_pylist()),
                            selected.column("q_value").to_pylist()))
    out = []
    for r in rows.to_pylist():
        other = r["test_index"] if link_to == "test" else r["train_index"]
        out.append([num(r["rank"]), _thumb(source, link_to, other, prefix),
                    f"<a href='{prefix}{link_to}/{other}'>{other}</a>", num(r["infl"]),
                    f"[{num(r['infl_lo'])}, {num(r['infl_hi'])}]", num(r["mem"])]
                   + ([num(q_values.get((r["train_index"], r["test_index"])))] if fdr is not None else []))
    return out


def _fdr_switch(prefix: str, path: str, fdr: float | None) -> tuple[list[str], str]:
    """(the q-value heading, if any; a link that turns the q-values on or off)."""
    if fdr is None:
        return [], f"<p><a href='{prefix}{path}?fdr=0.1'>show q-values at false discovery rate 0.1</a></p>"
    return [f"q (FDR {fdr:g})"], (f"<p>q-values of the pairs `raymem pairs --fdr {fdr:g}` selects (others: -). "
                                  f"<a href='{prefix}{path}'>hide</a></p>")


def train_example(source: RunSource, prefix: str, index: int, top: int = 10, fdr: float | None = None) -> str:
    """A training example: its memorization, and the test examples it influences most."""
    estimates = source.estimates()
    if not 0 <= index < estimates.num_rows:
        raise KeyError(index)
    r = estimates.slice(index, 1).to_pylist()[0]
    facts = (f"<p>{_thumb(source, 'train', index, prefix)} mem {num(r['mem'])} "
             f"in [{num(r['mem_lo'])}, {num(r['mem_hi'])}]"
             f" (n_in {r['n_in']}, n_out {r['n_out']}"
             + (f", label {esc(r.get('label_name', r.get('label')))}" if "label" in r else "")
             + (", label flipped (canary)" if r.get("label_flipped") else "") + ")</p>")
    rows = _influence_rows(source, prefix, source.influenced(index, top), "test", fdr)
    q_heading, switch = _fdr_switch(prefix, f"train/{index}", fdr)
    body = facts + "<h2>Test examples it influences most</h2>" + _images_note(source) + switch + table(
        ["rank", "", "test index", "infl", "interval", "mem"] + q_heading, rows, left=0)
    return page(f"{source.run.info.name}: training example {index}", body, prefix)


def test_example(source: RunSource, prefix: str, index: int, top: int = 10, fdr: float | None = None) -> str:
    """A test example: its top influencers (``Run.influence``), each linking to its page."""
    rows = _influence_rows(source, prefix, source.influence(index, top), "train", fdr)
    q_heading, switch = _fdr_switch(prefix, f"test/{index}", fdr)
    body = (f"<p>{_thumb(source, 'test', index, prefix)}</p><h2>Training examples that influence it most</h2>"
            + _images_note(source) + switch
            + table(["rank", "", "train index", "infl", "interval", "mem"] + q_heading, rows))
    return page(f"{source.run.info.name}: test example {index}", body, prefix)


def pairs_page(source: RunSource, prefix: str, fdr: float | None, page_no: int = 0, per_page: int = 100) -> str:
    """The high-influence pairs at the paper's thresholds, or at a false discovery rate."""
    pairs = source.pairs(fdr)
    shown = pairs.slice(page_no * per_page, per_page).to_pylist()
    rows = [[f"<a href='{prefix}train/{r['train_index']}'>{r['train_index']}</a>",
             f"<a href='{prefix}test/{r['test_index']}'>{r['test_index']}</a>", num(r["infl"]),
             f"[{num(r['infl_lo'])}, {num(r['infl_hi'])}]", num(r["mem"])]
            + ([num(r["q_value"])] if "q_value" in r else []) for r in shown]
    how = f"at false discovery rate {fdr:g}" if fdr is not None else "infl &ge; 0.15 and mem &ge; 0.25 (the paper's)"
    more = (f" <a href='{prefix}pairs?{urlencode({'fdr': fdr or '', 'page': page_no + 1})}'>next &rarr;</a>"
            if (page_no + 1) * per_page < pairs.num_rows else "")
    body = (f"<form method='get' action='{prefix}pairs'>FDR <input name='fdr' size='5' value='{esc(fdr or '')}'>"
            f"<button>select</button></form><p>{pairs.num_rows} pairs {how}.{more}</p>"
            + table(["train", "test", "infl", "interval", "mem"] + (["q"] if fdr is not None else []), rows))
    return page(f"{source.run.info.name}: pairs", body, prefix)


def trials_page(source: RunSource, prefix: str) -> str:
    """The ``raymem trials`` table."""
    trials = source.trials()
    keys = ["trial_id", "attempt", "host", "train_seconds", "resumed_from_epoch", "train_accuracy", "test_accuracy"]
    rows = [[num(r[k]) if not isinstance(r[k], str) else esc(r[k]) for k in keys] for r in trials.to_pylist()]
    return page(f"{source.run.info.name}: trials", f"<p>{trials.num_rows} trials.</p>" + table(keys, rows),
                prefix)
