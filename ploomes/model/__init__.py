"""Ploomes' vocabulary and the rules of one delivery: parsing, diff, state folding.

The bottom layer: it imports nothing else of the project.
"""
