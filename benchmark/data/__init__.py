"""Face data: dataset specs and listings (``datasets``), image I/O (``images``), LFW pairs (``lfw``), seeded
probe pools (``pool``) and probe/template/distractor splits (``split``), face detection and alignment into
cached crops (``prepare``), and synthetic test faces (``synthetic``)."""
