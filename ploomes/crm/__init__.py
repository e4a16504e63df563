"""Ploomes itself: the API client, the directory sync (users, fields), subscriptions.

Imports the model, the store and the configuration.
"""
