"""The suite report: results table, statistics, success criteria, plots, Markdown + CSV + self-contained HTML."""

from tbi_train.report.write import collect_results, success_criteria, write_report

__all__ = ["collect_results", "success_criteria", "write_report"]
