"""What the dashboard's pages call: read-only queries that return DataFrames.

Imports the model and the store's helpers; never the ingest or the intake.
"""
