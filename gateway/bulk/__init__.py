"""Bulk verification jobs: whole files checked under one purpose, each record as a verification."""
