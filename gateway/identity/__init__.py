"""Identity: matching, predicates and pseudonyms, as pure functions."""
