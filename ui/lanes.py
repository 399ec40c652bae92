"""Issue 25's views: the zero-shot line on the few-shot plot, accuracy against depth, the attentive head's
attention over photos, and the zero-shot prompt editor.

- ``zero_shot_lines`` / ``add_zero_shot_lines`` / ``crossing_text``: a zero-shot run (protocol ``zeroshot``, shots
  0) is a horizontal line per backbone on Compare's few-shot plot, and a sentence says at how many labelled
  images per class each probe curve of that backbone crosses it (log-linear between the measured levels).
- ``layerwise_figure`` / ``show_layerwise``: runs with features ``layer:<name>`` (``core.probing.layers``) as test
  accuracy against depth with 95 % intervals per backbone and protocol, the best block marked.
- ``show_attention``: an attentive run's attention over chosen photos, computed in the job queue.
- ``show_prompt_editor``: one dataset's class names and templates for the zero-shot lane.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import streamlit as st

from core.base.errors import FlowerProbeError
from core.base.text import html_text, markdown_text
from core.jobs.runner import progress_job
from core.probing.layers import LAYER_PREFIX, layer_depth
from core.runs.naming import protocol_name, run_name, weights_name
from ui.charts import add_chance_line, run_colour
from ui.jobs import job_card, live_jobs
from ui.state import job_runner, workspace

# ----------------------------------------------------------------------------------------------- zero-shot


def zero_shot_lines(runs: Sequence[Mapping]) -> list[dict]:
    """One line per (backbone, weights): the newest zero-shot run's test top-1 and interval."""
    lines: dict[tuple, dict] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        if run.get("protocol") == "zeroshot":
            lines[(run["backbone"], run["weights"])] = {
                "backbone": run["backbone"],
                "weights": run["weights"],
                "accuracy": run["test_acc"],
                "interval": tuple(run["metrics"]["test_acc_ci"]),
                "run_id": run["id"],
            }
    return list(lines.values())


def crossing(points: Sequence[Mapping], level: float) -> float | None:
    """Images per class where a curve (``x``, ``mean`` points) first rises to ``level``: interpolated on log x
    between the two measured levels around it; the first x when it starts above, None when it never gets there."""
    ordered = sorted(points, key=lambda p: p["x"])
    if not ordered:
        return None
    if ordered[0]["mean"] >= level:
        return float(ordered[0]["x"])
    for low, high in zip(ordered, ordered[1:]):
        if low["mean"] < level <= high["mean"]:
            share = (level - low["mean"]) / (high["mean"] - low["mean"])
            return float(math.exp(math.log(low["x"]) + share * (math.log(high["x"]) - math.log(low["x"]))))
    return None


def crossing_text(points: Sequence[Mapping], lines: Sequence[Mapping]) -> list[str]:
    """A sentence per (zero-shot line, probe curve of the same backbone and weights)."""
    sentences = []
    for line in lines:
        curves: dict[str, list] = {}
        for point in points:
            if (point["backbone"], point["weights"]) == (line["backbone"], line["weights"]):
                curves.setdefault(point["label"], []).append(point)
        name = f"{line['backbone']} · {weights_name(line['weights'])}"
        if not curves:
            sentences.append(f"Zero-shot {name}: {line['accuracy']:.1f} % (no probe curve of this backbone shown).")
        for label, members in curves.items():
            x = crossing(members, line["accuracy"])
            where = (
                f"crosses it at about {x:.3g} labelled images per class"
                if x is not None and x > min(p["x"] for p in members)
                else "is above it from its first level"
                if x is not None
                else "stays below it at every level measured"
            )
            sentences.append(f"Zero-shot {name} ({line['accuracy']:.1f} %): the curve {label} {where}.")
    return sentences


def add_zero_shot_lines(figure: go.Figure, lines: Sequence[Mapping], colour_keys: Sequence) -> None:
    """Dashed horizontal lines at each zero-shot accuracy, in the backbone's colour, labelled."""
    for line in lines:
        key = (line["backbone"], line["weights"])
        colour = run_colour(colour_keys.index(key)) if key in colour_keys else "#555555"
        low, high = line["interval"]
        figure.add_hrect(y0=low, y1=high, fillcolor=colour, opacity=0.08, line_width=0)
        figure.add_hline(
            y=line["accuracy"],
            line=dict(color=colour, dash="dashdot", width=2),
            annotation_text=html_text(
                f"zero-shot {line['backbone']} · {weights_name(line['weights'])}: {line['accuracy']:.1f} %"
            ),
            annotation_position="top left",
        )


# ----------------------------------------------------------------------------------------------- depth


def layerwise_figure(runs: Sequence[Mapping], *, n_classes: int | None = None) -> go.Figure:
    """Test top-1 against depth (block / number of blocks) with 95 % intervals, per backbone, weights, protocol;
    a star on each line's best block."""
    figure = go.Figure()
    lines: dict[tuple, list] = {}
    for run in runs:
        depth = layer_depth(run["backbone"], run["features"])
        if depth is not None:
            lines.setdefault((run["backbone"], run["weights"], run["protocol"]), []).append((depth, run))
    colour_keys = list(dict.fromkeys((b, w) for b, w, _ in lines))
    for (backbone, weights, protocol), members in lines.items():
        members.sort(key=lambda m: m[0][0])
        depth = [m[0][0] for m in members]
        acc = [m[1]["test_acc"] for m in members]
        low = [a - m[1]["metrics"]["test_acc_ci"][0] for a, m in zip(acc, members)]
        high = [m[1]["metrics"]["test_acc_ci"][1] - a for a, m in zip(acc, members)]
        names = [m[1]["features"][len(LAYER_PREFIX) :] for m in members]
        colour = run_colour(colour_keys.index((backbone, weights)))
        label = html_text(f"{backbone} · {weights_name(weights)} · {protocol_name(protocol)}")
        figure.add_scatter(
            x=depth,
            y=acc,
            mode="lines+markers",
            name=label,
            line=dict(color=colour, dash={"knn": "solid", "logreg": "dash", "ncm": "dot"}.get(protocol, "solid")),
            error_y=dict(type="data", symmetric=False, array=high, arrayminus=low, thickness=1, width=3),
            customdata=names,
            hovertemplate=f"{label}<br>%{{customdata}} (block %{{x}}): %{{y:.1f}} %<extra></extra>",
        )
        best = max(range(len(acc)), key=lambda i: (acc[i], depth[i]))
        figure.add_scatter(
            x=[depth[best]],
            y=[acc[best]],
            mode="markers+text",
            marker=dict(symbol="star", size=16, color=colour, line=dict(width=1, color="black")),
            text=[f"best: {names[best]}"],
            textposition="bottom center" if acc[best] > 90 else "top center",  # inside the 0-100 axis
            showlegend=False,
            hoverinfo="skip",
        )
    figure.update_layout(
        height=460,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=-0.25, yanchor="top"),
        xaxis=dict(title="block (1 = first; CNNs: stages, then the pooled output)", dtick=1),
        yaxis=dict(title="test accuracy (%)", range=[0, 100]),
    )
    add_chance_line(figure, n_classes)
    return figure


def show_layerwise(runs: Sequence[Mapping]) -> None:
    """Compare's 'Layer-wise' view."""
    st.subheader("Accuracy against depth")
    layered = [r for r in runs if str(r.get("features", "")).startswith(LAYER_PREFIX)]
    if not layered:
        st.caption(
            "No layer-wise runs on this dataset yet: python -m core probe --layers all (k-NN, logreg, NCM on the "
            "pooled features of every block, from one forward pass) makes them."
        )
        return
    st.caption(
        "Test top-1 of each block's pooled features (ViTs: the class token through the final norm; CNNs: the global "
        "average pool of each stage, then the model's own output), whole training part, with 95 % bootstrap "
        "intervals over the test images; a star marks each line's best block."
    )
    st.plotly_chart(
        layerwise_figure(layered, n_classes=len(layered[0]["class_names"])), config={"displayModeBar": False}
    )


# ----------------------------------------------------------------------------------------------- attention

_ATTENTION_JOB = "attention_job"


def show_attention(images: list[tuple[str, object]], runs: list[dict], *, key: str) -> None:
    """The attention of an attentive run's head over ``images`` (name, source), computed in the job queue."""
    from core.predict.attention import attention_views, attentive_runs

    candidates = attentive_runs(runs)
    st.subheader("Where the attentive probe looks")
    if not candidates:
        st.caption(
            "No attentive run yet: extract patch tokens (python -m core extract --tokens, or the Train page's "
            "'Patch tokens') and run the attentive protocol; its head's attention over the patches shows here."
        )
        return
    by_id = {r["id"]: r for r in candidates}
    run_id = st.selectbox(
        "Attentive run",
        list(by_id),
        format_func=lambda i: f"{run_name(by_id[i])} · {by_id[i]['dataset_name']}",
        key=f"{key}_attentive_run",
    )
    run = by_id[run_id]
    inputs_key = (run_id, tuple(str(s) if not isinstance(s, bytes) else hash(s) for _, s in images))
    runner = job_runner()
    asked = st.session_state.get(f"{key}_{_ATTENTION_JOB}")
    job = None
    if asked is not None and asked[0] == inputs_key:
        job = next((j for j in runner.jobs() if j.id == asked[1]), None)
    if job is None:
        if not st.button("Show its attention", icon=":material/visibility:", key=f"{key}_attention_go"):
            st.caption("Runs in the background job queue: one backbone forward per photo.")
            return
        job = runner.submit(
            f"Attention of run {run_id} over {len(images)} photo(s)",
            progress_job(attention_views, run=run, images=images, workspace=workspace()),
            kind="patches",
            key=repr(inputs_key),
        )
        st.session_state[f"{key}_{_ATTENTION_JOB}"] = (inputs_key, job.id)
    if job.status != "completed":
        live_jobs(lambda: job_card(runner.get(job.id)), busy=lambda: runner.get(job.id).active)
        return
    views = job.result
    rows, cols = views[0].weights.shape
    st.caption(
        markdown_text(
            f"Run {run_id}: the attentive head ({run['backbone']}, {weights_name(run['weights'])}, trained on "
            f"{run['dataset_name']}) pools the {rows} x {cols} patches with attention weights that sum to 1; shown "
            "averaged over its queries and heads, scaled to each photo's largest weight (colorcet bgy: yellow = most)."
        )
    )
    for view in views:
        st.markdown(
            f"**{markdown_text(view.name)}** · "
            + markdown_text(
                f"predicted {view.predicted} ({view.confidence:.0f} %) · the most-attended patch gets "
                f"{view.peak_share:.1f}x the uniform weight"
            )
        )
        st.image([view.crop, view.overlay], width=260, caption=["photo (model input)", "attention over the patches"])


# ----------------------------------------------------------------------------------------------- tokens


def tokens_option(choice, protocols: Sequence[str]) -> bool:
    """The Train page's 'Patch tokens' option: extract the chosen backbones' tokens first; their size is said."""
    from core.backbones.tokens import token_layout
    from core.features.tokens import size_text
    from core.probing.experiment import parse_backbone
    from ui.state import cached_dataset

    if not choice.backbones:
        return False
    images = len(cached_dataset(choice.dataset).image_paths)
    sizes = "; ".join(
        f"{spec}: {size_text(token_layout(parse_backbone(spec).backbone), images)}" for spec in choice.backbones
    )
    return st.checkbox(
        "Patch tokens: extract them first (the attentive protocol trains on them)",
        value="attentive" in protocols,
        key="probe_tokens",
        help=f"Final-block patch tokens in fp16, cached once (class and register tokens left out). On disk: {sizes}.",
    )


def tokens_then(target, *, choice, workspace):
    """A job target extracting the patch tokens of ``choice``'s backbones (cached: once), then running ``target``."""
    from core.data.datasets import prepare_dataset
    from core.features.tokens import extract_tokens

    def run(context):
        dataset = prepare_dataset(choice.dataset, workspace, progress=context.progress)
        for spec in choice.backbones:
            extract_tokens(
                dataset,
                spec,
                workspace=workspace,
                device=choice.device,
                precision=choice.precision,
                progress=context.progress,
            )
        return target(context)

    return run


# ----------------------------------------------------------------------------------------------- prompts


def show_prompt_editor(dataset) -> None:
    """The zero-shot class names and templates of ``dataset``, editable; saved only when valid."""
    from core.probing.zeroshot import default_prompts, load_prompts, save_prompts

    with st.expander("Zero-shot class names and prompt templates", icon=":material/text_fields:"):
        st.caption(
            "A CLIP backbone's text tower turns these into one embedding per class (the mean over the templates, "
            "{c} standing for the name): python -m core probe --protocols zeroshot. Default: the folder names and "
            "open_clip's 80 ImageNet templates."
        )
        prompts = load_prompts(workspace(), dataset)
        left, right = st.columns(2)
        names = left.text_area(
            "Class names, one a line (in the dataset's class order)",
            "\n".join(prompts.class_names),
            height=300,
            key=f"zeroshot_names_{dataset.key}",
        )
        templates = right.text_area(
            "Templates, one a line, each with {c}",
            "\n".join(prompts.templates),
            height=300,
            key=f"zeroshot_templates_{dataset.key}",
        )
        save, reset = st.columns(2)
        if save.button("Save", key=f"zeroshot_save_{dataset.key}", icon=":material/save:"):
            try:
                saved = save_prompts(workspace(), dataset, names.strip("\n").split("\n"), templates.split("\n"))
            except FlowerProbeError as exc:
                st.error(markdown_text(str(exc)), icon=":material/error:")
            else:
                st.success(
                    f"Saved {len(saved.class_names)} class names and {len(saved.templates)} templates.",
                    icon=":material/check:",
                )
        if reset.button("Back to the defaults", key=f"zeroshot_reset_{dataset.key}"):
            default = default_prompts(dataset)
            save_prompts(workspace(), dataset, default.class_names, default.templates)
            for field in ("names", "templates"):
                st.session_state.pop(f"zeroshot_{field}_{dataset.key}", None)
            st.rerun()
