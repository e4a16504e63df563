"""The write path into the store: pipeline, user rollups, the ingest process, rebuild.

Imports the model, the journal (`ploomes.intake`) and the store; nothing above them.
"""
