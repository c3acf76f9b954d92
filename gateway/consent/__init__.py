"""Consent: recorded by a channel for one person, one grantee, one purpose; checked and counted on use."""
