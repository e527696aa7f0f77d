"""search stage/layer of mf2m."""
