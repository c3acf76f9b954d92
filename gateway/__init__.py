"""Jamu: the interoperability gateway and identity-verification API in front of the civil register."""

__version__ = "0.1.0"
