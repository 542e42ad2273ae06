"""Grafana dashboards of the chart, installed with corral as `corral.cluster.grafana` (data only).

This file lets Python find the folder (pyproject `package-dir`); helm ignores it (.helmignore).
"""
