"""models stage/layer of mf2m."""
