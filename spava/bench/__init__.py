"""`spava bench`: side-by-side time-to-first-token benchmark of the attention methods."""
