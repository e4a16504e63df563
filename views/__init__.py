"""Streamlit pages of the dashboard: thin views over query functions in `ploomes/`."""
