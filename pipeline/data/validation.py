"""Great Expectations suite for training snapshots.

The suite checks the schema, the share of nulls per feature, value ranges and the row count. A
failing batch raises :class:`ValidationFailed` after its report is written, so the run stops
before training and the report stays for review.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.core.io import atomic_write_bytes, atomic_write_json
from pipeline.core.settings import FEATURES, Settings

log = logging.getLogger(__name__)

SUITE_NAME = "customer_segments_snapshot"


class ValidationFailed(RuntimeError):
    """The training snapshot broke the suite; ``report`` is the path of the kept report."""

    def __init__(self, message: str, report: Path):
        super().__init__(f"{message} (report: {report})")
        self.report = report


@dataclass(frozen=True)
class ValidationResult:
    success: bool
    evaluated: int
    failed: list[str]
    report_json: str
    report_html: str


def build_expectations(*, min_rows: int, max_null_share: float, columns: list[str] | None = None):
    """The expectations of the suite, as Great Expectations objects."""
    import great_expectations as gx

    exp = gx.expectations
    cols = ["customer_id", *FEATURES] if columns is None else columns
    out = [
        exp.ExpectTableColumnsToMatchSet(column_set=cols, exact_match=True),
        exp.ExpectTableRowCountToBeBetween(min_value=min_rows),
        exp.ExpectColumnValuesToNotBeNull(column="customer_id"),
        exp.ExpectColumnValuesToBeUnique(column="customer_id"),
    ]
    for name, spec in FEATURES.items():
        out.append(exp.ExpectColumnValuesToBeInTypeList(
            column=name, type_list=["float64", "float32", "int64", "int32", "Float64", "Int64"]))
        out.append(exp.ExpectColumnValuesToNotBeNull(column=name, mostly=1.0 - max_null_share))
        out.append(exp.ExpectColumnValuesToBeBetween(
            column=name, min_value=spec["min"], max_value=spec["max"]))
    return out


def validate_frame(frame: pd.DataFrame, report_dir: Path, *, name: str, min_rows: int,
                   max_null_share: float) -> ValidationResult:
    """Run the suite on ``frame``; write ``<name>.json`` and ``<name>.html`` under report_dir."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # A batch report, not an interactive session: no progress bars on the console.
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("training_snapshot")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for expectation in build_expectations(min_rows=min_rows, max_null_share=max_null_share):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{SUITE_NAME}_check", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame})
    described = result.describe_dict()
    failed = [_describe(e) for e in described["expectations"] if not e["success"]]
    report_json = atomic_write_json(report_dir / f"{name}.json", {
        "suite": SUITE_NAME, "success": result.success, "statistics": described["statistics"],
        "failed": failed, "result": result.to_json_dict(),
    })
    report_html = atomic_write_bytes(report_dir / f"{name}.html",
                                     _render_html(described, failed).encode())
    return ValidationResult(success=bool(result.success),
                            evaluated=described["statistics"]["evaluated_expectations"],
                            failed=failed, report_json=str(report_json),
                            report_html=str(report_html))


def validate_snapshot(settings: Settings, snapshot) -> ValidationResult:
    """Validate a training snapshot; raise :class:`ValidationFailed` if any expectation fails."""
    result = validate_frame(
        snapshot.frame(), settings.reports_dir / "validation", name=snapshot.data_hash[:16],
        min_rows=settings.min_rows, max_null_share=settings.max_null_share,
    )
    if not result.success:
        raise ValidationFailed(
            f"snapshot {snapshot.data_hash[:16]} failed {len(result.failed)} of "
            f"{result.evaluated} expectations: " + "; ".join(result.failed[:5]),
            Path(result.report_html),
        )
    log.info("snapshot %s passed %d expectations", snapshot.data_hash[:16], result.evaluated)
    return result


def _describe(exp: dict) -> str:
    kwargs = _arguments(exp)
    res = exp.get("result") or {}
    seen = res.get("observed_value", res.get("unexpected_percent"))
    what = "observed" if "observed_value" in res else "unexpected %"
    return f"{exp['expectation_type']}({json.dumps(kwargs, default=str)}): {what}={seen}"


def _arguments(exp: dict) -> dict:
    return {k: v for k, v in exp["kwargs"].items() if k != "batch_id"}


def _render_html(described: dict, failed: list[str]) -> str:
    rows = "".join(
        f"<tr class={'ok' if e['success'] else 'bad'}><td>{'pass' if e['success'] else 'FAIL'}</td>"
        f"<td>{html.escape(e['expectation_type'])}</td>"
        f"<td>{html.escape(json.dumps(_arguments(e), default=str))}</td>"
        f"<td>{html.escape(json.dumps(e.get('result', {}), default=str)[:300])}</td></tr>"
        for e in described["expectations"]
    )
    stats = described["statistics"]
    return (
        "<!doctype html><meta charset=utf-8><title>Validation report</title>"
        "<style>body{font-family:sans-serif}td{border:1px solid #ccc;padding:4px;font-size:12px}"
        ".bad{background:#fdd}.ok{background:#efe}</style>"
        f"<h1>Suite {SUITE_NAME}: {'passed' if described['success'] else 'FAILED'}</h1>"
        f"<p>{stats['successful_expectations']} of {stats['evaluated_expectations']} expectations "
        f"passed.</p><table><tr><th>status</th><th>expectation</th><th>arguments</th>"
        f"<th>result</th></tr>{rows}</table>"
    )
