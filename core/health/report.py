"""The health report: what the checks found for one (dataset, backbone, weights, variant), its CSV rows and text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.health.copies import COPY_SSIM, classify_pair


@dataclass(frozen=True)
class HealthReport:
    """One health analysis. Images are numbered by position in ``paths`` (the analysed images).

    label_issues : training and validation images, ``{"image", "given", "suggested", "score", "flagged"}``,
        lowest score first
    pairs : duplicate candidates ``{"a", "b", "similarity", "exact"}`` (each image's nearest neighbours and
        every byte copy)
    outliers : every image, ``{"image", "score", "flagged"}``, highest distance first
    """

    dataset_key: str
    dataset_name: str
    fingerprint: str  # of the dataset as analysed (exclusions applied)
    backbone: str
    weights: str
    weights_tag: str
    precision: str
    variant: str | None
    features_file: str  # the feature cache's name under <workspace>/features
    config: dict
    class_names: list[str]
    paths: list[str]  # relative to the dataset folder, POSIX
    parts: list[str]  # "train" / "val" / "test" of each image in config["split"] ("" when in none)
    labels: list[int]
    label_issues: list[dict]
    pairs: list[dict]
    duplicate_threshold: float
    threshold_source: str  # how duplicate_threshold was chosen
    outliers: list[dict]
    outlier_cutoff: float
    skipped: list[list[str]]  # [relative path, reason]: excluded by the user, or unreadable
    timings: dict
    created_at: float
    from_cache: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("from_cache")
        return data

    @classmethod
    def from_dict(cls, data: dict, *, from_cache: bool = False) -> HealthReport:
        return cls(**data, from_cache=from_cache)

    def duplicates(self, threshold: float | None = None) -> list[dict]:
        """Pairs at or above ``threshold`` (default: the report's) and every byte copy: copies first, then near
        neighbours, most similar first.

        Each pair also carries ``part_a``, ``part_b``, ``photo`` (SSIM of the two photos, ``photo_similarity``),
        ``copy`` and ``leakage`` (``core.health.copies.classify_pair``).
        """
        cut = self.duplicate_threshold if threshold is None else float(threshold)
        found = [
            classify_pair(pair, part_a=self.parts[pair["a"]], part_b=self.parts[pair["b"]])
            for pair in self.pairs
            if pair["exact"] or pair["similarity"] >= cut
        ]
        return sorted(found, key=lambda p: (not p["exact"], not p["copy"], -p["similarity"]))

    def copies(self, threshold: float | None = None) -> list[dict]:
        """``duplicates`` whose photos agree (byte copies and SSIM >= ``COPY_SSIM``)."""
        return [pair for pair in self.duplicates(threshold) if pair["copy"]]

    def flagged_labels(self) -> list[dict]:
        return [issue for issue in self.label_issues if issue["flagged"]]

    def flagged_outliers(self) -> list[dict]:
        return [outlier for outlier in self.outliers if outlier["flagged"]]

    def counts(self, threshold: float | None = None) -> dict[str, int]:
        """How many images or pairs each check flags."""
        duplicates = self.duplicates(threshold)
        return {
            "label issues": len(self.flagged_labels()),
            "copies": sum(p["copy"] for p in duplicates),
            "exact copies": sum(p["exact"] for p in duplicates),
            "leakage pairs": sum(p["leakage"] for p in duplicates),
            "near neighbours": sum(not p["copy"] for p in duplicates),
            "outliers": len(self.flagged_outliers()),
        }

    @property
    def candidate_floor(self) -> float:
        """The lowest similarity among the stored candidates: a threshold below it would miss pairs."""
        return min((p["similarity"] for p in self.pairs), default=1.0)

    def flagged_rows(self, threshold: float | None = None) -> list[dict]:
        """One row per flagged image (a duplicate pair gives a row for each image), for
        ``core.base.csv_export.csv_text``.
        """
        names = self.class_names

        def row(
            *, image: int, issue: str, score: float, given: int, suggested: str = "", partner: int | None = None
        ) -> dict:
            """One row of ``CSV_COLUMNS`` for image ``image``; ``partner``: the other image of a duplicate pair."""
            return {
                "path": self.paths[image],
                "issue": issue,
                "score": round(score, 6),
                "given": names[given],
                "suggested": suggested,
                "part": self.parts[image],
                "partner": "" if partner is None else self.paths[partner],
                "partner_part": "" if partner is None else self.parts[partner],
            }

        rows = [
            row(image=i["image"], issue="label", score=i["score"], given=i["given"], suggested=names[i["suggested"]])
            for i in self.flagged_labels()
        ]
        for pair in self.duplicates(threshold):
            issue = "leakage" if pair["leakage"] else "copy" if pair["copy"] else "near neighbour"
            issue += " (exact copy)" if pair["exact"] else ""
            for me, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
                rows.append(row(image=me, issue=issue, score=pair["similarity"], given=self.labels[me], partner=other))
        rows += [
            row(image=o["image"], issue="outlier", score=o["score"], given=self.labels[o["image"]])
            for o in self.flagged_outliers()
        ]
        return rows


CSV_COLUMNS = ("path", "issue", "score", "given", "suggested", "part", "partner", "partner_part")


def report_text(report: HealthReport, *, top: int = 5, threshold: float | None = None) -> str:
    """What ``python -m core health`` prints: the inputs, counts per issue type and the top candidates of each."""
    names = report.class_names
    weights = "" if report.weights == "pretrained" else f" ({report.weights} weights)"
    counts = report.counts(threshold)
    cut = report.duplicate_threshold if threshold is None else threshold
    lines = [
        f"{report.dataset_name}: {len(report.paths)} images, split {report.config['split']}, "
        f"{report.backbone}{weights}, features {report.variant or 'default'}, fingerprint {report.fingerprint}"
        + (" (from cache)" if report.from_cache else ""),
        f"skipped {len(report.skipped)} image(s) (excluded or unreadable); "
        f"computed in {report.timings['total_s']:.1f} s",
        "",
        *(f"{name:<16} {count:>6}" for name, count in counts.items()),
        "",
        f"Label issues (cleanlab, {report.config['folds']}-fold logistic regression on train+val), "
        "lowest label quality first:",
        *(
            f"  {i['score']:.4f}  {report.paths[i['image']]}  "
            f"given {names[i['given']]!r}, suggested {names[i['suggested']]!r}"
            + ("" if i["flagged"] else "  (not flagged)")
            for i in report.label_issues[:top]
        ),
        f"Copies (byte copies, or photos whose SSIM >= {COPY_SSIM:g} among pairs at feature cosine >= {cut:.4f}, "
        f"{report.threshold_source}):",
        *(
            f"  SSIM {p['photo']:.3f} cosine {p['similarity']:.4f}  {report.paths[p['a']]} ({p['part_a']})  <->  "
            f"{report.paths[p['b']]} ({p['part_b']})"
            + ("  exact copy" if p["exact"] else "")
            + ("  LEAKAGE" if p["leakage"] else "")
            for p in report.copies(threshold)[:top]
        ),
        "Near neighbours (close in features, but the photos differ: not copies):",
        *(
            f"  cosine {p['similarity']:.4f} SSIM "
            f"{'-' if p['photo'] is None else format(p['photo'], '.3f')}  {report.paths[p['a']]} ({p['part_a']})  "
            f"<->  {report.paths[p['b']]} ({p['part_b']})"
            for p in [q for q in report.duplicates(threshold) if not q["copy"]][:top]
        ),
        f"Outliers (cosine distance to the {report.config['outlier_k']}-th nearest training image; flagged above "
        f"{report.outlier_cutoff:.4f}), farthest first:",
        *(
            f"  {o['score']:.4f}  {report.paths[o['image']]} ({report.parts[o['image']]})"
            + ("" if o["flagged"] else "  (not flagged)")
            for o in report.outliers[:top]
        ),
    ]
    return "\n".join(lines)
