"""data stage/layer of mf2m."""
