"""Backends that hold identity attributes, behind one protocol."""
