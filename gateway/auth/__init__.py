"""OAuth 2.0: the token endpoint, its signing keys, and the bearer check on protected routes."""
