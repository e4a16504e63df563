"""Invented data, labelled as such: the seeded generator, the local Ploomes sandbox, demo
loads. Only the command line, the dashboard's demo button and the sandbox import it.
"""
