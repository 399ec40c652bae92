"""The "Download model" control of the Compare and Classify pages: a run as a deployable bundle, zipped.

Exporting (ONNX export, parity check against the run's own predictions, the card) takes from seconds to minutes, so
it runs in the job runner (kind ``"export"``, key the run id) into ``<workspace>/exports/run-<id>``; once that
folder is there the page offers it as a zip made in memory with ``st.download_button``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import streamlit as st

from core.base.text import markdown_text
from core.bundle.export import export_bundle
from core.jobs.runner import progress_job
from core.predict.classify import MEMORY_PROTOCOLS
from ui.jobs import job_card, live_jobs
from ui.state import job_runner, user_errors, workspace

EXPORT_KIND = "export"  # core.jobs.runner.JOB_KINDS


def bundle_folder(run_id: int) -> Path:
    return workspace().root / "exports" / f"run-{run_id}"


def _zip_bytes(folder: Path) -> bytes:
    """The bundle folder as a zip (in memory: a bundle is a model file of 5-100 MB and a few small files)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, arcname=f"{folder.name}/{path.name}")
    return buffer.getvalue()


def download_model(run: dict, *, key: str) -> None:
    """The run's "Download model" control: export it as a job, then offer the zip; refused runs say why."""
    if run.get("protocol") in MEMORY_PROTOCOLS:
        st.caption(
            markdown_text(
                f"Run {run['id']} ({run['protocol']}) has no weights to export: its head is its training features."
            )
        )
        return
    folder = bundle_folder(run["id"])
    runner = job_runner()
    jobs = runner.find(kinds=(EXPORT_KIND,), key=str(run["id"]))
    active = next((job for job in jobs if job.active), None)
    if (folder / "model.onnx").is_file() and active is None:
        st.download_button(
            "Download model",
            data=lambda: _zip_bytes(folder),
            file_name=f"flower-probe-run-{run['id']}.zip",
            mime="application/zip",
            on_click="ignore",
            icon=":material/download:",
            key=f"{key}_download_{run['id']}",
            help="model.onnx (backbone + head, onnxruntime), preprocessing.json, labels.json, the model card "
            "README.md and the head for PyTorch; parity-checked against this run's own predictions.",
        )
        return
    if active is None and st.button(
        "Prepare model download",
        icon=":material/deployed_code:",
        key=f"{key}_export_{run['id']}",
        help="Exports the backbone and this run's head as one ONNX graph, checks it against Flower Probe's own "
        "predictions, and writes its model card (python -m core export).",
    ):
        with user_errors():
            active = runner.submit(
                f"Export run {run['id']} as a deployable model",
                progress_job(export_bundle, run_id=run["id"], workspace=workspace(), out=folder, force=True),
                kind=EXPORT_KIND,
                key=str(run["id"]),
            )
    if active is not None:
        job_id = active.id
        live_jobs(lambda: job_card(runner.get(job_id)), busy=lambda: runner.get(job_id).active)
    elif jobs and jobs[0].status == "failed":
        job_card(jobs[0])


def download_models(runs: list[dict], *, key: str) -> None:
    """``download_model`` for each of ``runs``, in an expander (a page's runs, one control each)."""
    with st.expander("Download a run as a deployable model (ONNX + model card)", icon=":material/deployed_code:"):
        for run in runs:
            st.markdown(
                markdown_text(
                    f"Run {run['id']}: {run['backbone']} ({run['weights']}), {run.get('protocol') or 'mlp'} head, "
                    f"test top-1 {run['test_acc']:.1f} %"
                )
            )
            download_model(run, key=key)
