"""Report settings for callers without a configuration, kept apart from the figures so that
code which only names the report's files (the workflow, at every job start) does not import
matplotlib."""

from __future__ import annotations

from typing import Any

# The values of config/config.yaml's report block, for callers without a configuration.
DEFAULT_REPORT: dict[str, Any] = {
    "metric": "accuracy",
    "formats": ["pdf", "png"],
    "dpi": 300,
    "text_width_in": 6.3,
    "font_size": 9,
    "font_family": "serif",
    "palette": "colorblind",
    "decimals": 2,
}
