"""The access log: every access recorded, and proof it was not altered."""
