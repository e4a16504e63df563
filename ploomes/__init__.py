"""Ploomes webhook monitor: core package (no Flask, no Streamlit)."""
