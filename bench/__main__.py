"""``python -m bench``: run the benchmark sections, write the JSON report, print the targets table.

Examples::

    python -m bench --quick                                   # a few-minute smoke run
    python -m bench --out bench/results/cpu-2core.json        # the full run behind the README table
    python -m bench --only tsne,heads --out /tmp/part.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from .common import (
    DEFAULT_WORKSPACE,
    SECTIONS,
    Context,
    Sizes,
    bench_workspace,
    cpu_probe_s,
    format_table,
    load_average,
    machine,
    parse_sections,
)

DEFAULT_OUT = Path("bench/results/latest.json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere: a smoke run of a few minutes")
    parser.add_argument(
        "--gpu-sizes", action="store_true", help="inputs sized for a datacentre GPU (bench/gpu_check.sh)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report path (default {DEFAULT_OUT})")
    parser.add_argument("--only", help=f"comma-separated sections to run, from: {','.join(SECTIONS)} (default: all)")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_WORKSPACE,
        help=f"the bench's own workspace folder (default {DEFAULT_WORKSPACE})",
    )
    parser.add_argument(
        "--reference-full",
        action="store_true",
        help="run the whole reference protocol instead of extrapolating it (15-30 min on 2 CPU cores)",
    )
    return parser


def _run_section(name: str, context: Context, arguments: argparse.Namespace):
    from . import (
        agreement,
        attentive,
        browser_pages,
        cost,
        demo,
        extraction,
        gpu,
        heads,
        maps,
        onnx,
        pages,
        probes,
        reference,
        roofline,
        scale,
        tsne,
    )

    modules = {
        "roofline": roofline,
        "extraction": extraction,
        "reference": reference,
        "heads": heads,
        "tsne": tsne,
        "pages": pages,
        "browser": browser_pages,
        "demo": demo,
        "probes": probes,
        "maps": maps,
        "scale": scale,
        "cost": cost,
        "agreement": agreement,
        "onnx": onnx,
        "attentive": attentive,
        "gpu": gpu,
    }
    if name == "reference":
        return reference.run(context, full_reference=arguments.reference_full)
    return modules[name].run(context)


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        sections = parse_sections(arguments.only)
        root = bench_workspace(arguments.workspace, quick=arguments.quick)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizes = Sizes.quick() if arguments.quick else Sizes.gpu() if arguments.gpu_sizes else Sizes()
    context = Context(sizes=sizes, workspace_root=root, quick=arguments.quick)
    report: dict = {
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": arguments.quick,
        "machine": machine(),
        "sizes": context.sizes.__dict__,
        "workspace": str(root),
        "load_average_start": load_average(),
        "cpu_probe_s_start": cpu_probe_s(),
        "sections": {},
        "targets": [],
    }
    targets = []
    for name in sections:
        probe = cpu_probe_s()
        context.log(f"[{name}] load average {load_average()}, CPU probe {probe} s (common.cpu_probe_s)")
        started = time.perf_counter()
        try:
            results, section_targets = _run_section(name, context, arguments)
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            results, section_targets = {"error": f"{type(exc).__name__}: {exc}"}, []
        results["section_s"] = round(time.perf_counter() - started, 1)
        results["load_average_end"] = load_average()
        results["cpu_probe_s"] = {"start": probe, "end": cpu_probe_s()}
        report["sections"][name] = results
        targets.extend(section_targets)
    report["load_average_end"] = load_average()
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["targets"] = [target.to_dict() for target in targets]
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    described = report["machine"]
    print(
        f"\n{described['cpu']}, {described['cpu_count']} cores ({described['device']}); "
        f"load average {report['load_average_start']} at start, {report['load_average_end']} at end; "
        f"CPU probe {report['cpu_probe_s_start']} s at start"
    )
    print(format_table(targets))
    print(f"\nReport: {arguments.out}")
    return 1 if any("error" in section for section in report["sections"].values()) else 0


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
