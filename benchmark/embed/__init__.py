"""The embed stage: images (a dataset spec or a CSV of aligned crops) → an HDF5 feature set with a manifest,
batched and resumable shard by shard (``engine``, ``shards``), with image loading (``loader``) and the
precision-aware forward pass (``runtime``)."""
