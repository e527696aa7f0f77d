"""The embed stage: images (a dataset spec or a CSV of aligned crops) → an HDF5 feature set with a manifest,
batched and resumable shard by shard (``engine``, ``shards``), with image loading (``loader``) and the
precision-aware forward pass (``runtime``); ``embed`` (``api``) runs it on faces in memory."""

__all__ = ["embed"]


def __getattr__(name: str):
    # ``benchmark.embed.embed`` without importing torch at package import
    if name == "embed":
        from .api import embed

        return embed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
