"""Section "cost": ``python -m core cost``'s measurement of EfficientNet-Lite0, ResNet-50 and DINOv2 ViT-S/14.

Issue 24's target: measuring one backbone's cost (build, FLOPs, latency, a batch of 64 or two, decoding) takes
under 30 s on this CPU. Pretrained weights where they are offline (EfficientNet-Lite0), random weights for the
others (the same architecture costs the same). Each backbone is measured afresh (``remeasure``) in the bench's own
workspace, with the CPU's flags, threads and the load average before and after recorded beside every figure.
"""

from __future__ import annotations

from .common import Context, Target

BACKBONES = (("efficientnet_lite0", "pretrained"), ("resnet50", "random"), ("dinov2_vits14", "random"))
BUDGET_S = 30.0


def run(context: Context) -> tuple[dict, list[Target]]:
    from core.cost.measure import cost_table, cpu_model_and_flags, measure_costs

    batch = 8 if context.quick else 64
    results = measure_costs(list(BACKBONES), workspace=context.workspace, batch_size=batch, remeasure=True)
    costs = [cost for _, _, cost, _, _ in results if cost is not None]
    for line in cost_table(costs).splitlines():
        context.log("  " + line)
    cpu, flags = cpu_model_and_flags()
    targets = []
    for backbone, weights, cost, _, error in results:
        label = backbone if weights == "pretrained" else f"{backbone}@{weights}"
        if cost is None:
            targets.append(Target(f"cost of {label}: measuring", None, "<", BUDGET_S, "s", note=error or ""))
            continue
        note = f"load average {cost.load_before[0]:.1f} before; " + (cost.busy or "quiet machine")
        targets.append(Target(f"cost of {label}: measuring (batch {batch})", cost.seconds, "<", BUDGET_S, "s", note))
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "batch_size": batch,
        "costs": [cost.to_dict() for cost in costs],
        "errors": {f"{b}@{w}": e for b, w, c, _, e in results if e},
    }, targets
