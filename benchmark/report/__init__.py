"""report stage/layer of mf2m."""
