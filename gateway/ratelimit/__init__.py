"""Rate limits per administration: GCRA arithmetic (pure), in-process and Redis backends, the fallback."""
