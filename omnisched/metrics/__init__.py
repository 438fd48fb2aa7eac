"""Run outputs: metrics.jsonl + TensorBoard, and the markdown report with plots."""

from omnisched.metrics.logger import MetricsLogger, read_metrics
from omnisched.metrics.report import write_report

__all__ = ["MetricsLogger", "read_metrics", "write_report"]
