"""The receiving side: validation keys, the durable journal, the receiving service.

Imports the model and the configuration; never the store, the ingest or an HTTP server.
"""
