"""The search stage: probe, mate and distractor feature sets → exact MegaFace-protocol metrics (rank-1, CMC,
TAR@FAR, AUC) over every score, by blocked GEMMs with additive partial results (``engine``), the
probe–mate identity join (``identity``), multi-process merging (``distributed``) and the outputs
(``outputs``); ``run`` drives it from files."""
