"""Aggregate finished runs into the summary, the thesis tables and the thesis figures."""
