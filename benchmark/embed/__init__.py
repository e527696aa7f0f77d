"""embed stage/layer of mf2m."""
