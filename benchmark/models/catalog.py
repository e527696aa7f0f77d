"""Where the paper's model files come from: public URLs, published SHA-256 sums, what each file provides.

``mf2m models fetch NAME`` reads this catalogue. A name is an artifact (``buffalo_l``) or a registry
model it provides (``w600k_r50``, ``2d106``, ``scrfd``, ``glintr100``, ``iresnet50``,
``retinanet-facemask``). Artifacts without a direct public URL (the authors publish them only behind
cloud-drive pages) carry ``manual`` instructions instead and can be fetched with ``--from``.

Hashes: insightface publishes no checksums for its model packs. The SHA-256 sums pinned here for
``buffalo_l.zip`` / ``antelopev2.zip`` and their members are the ones independently published, and in
agreement, by several projects that download the same v0.7 release assets. Artifacts with no
published hash have ``sha256=None``: their hash is recorded on first download (with a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"
INSIGHTFACE_LICENSE = (
    "insightface's pretrained models are for non-commercial research only "
    "(https://github.com/deepinsight/insightface#license)"
)
ARCFACE_TORCH_ZOO = "https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch"
RETINANET_REPO = "https://github.com/simpletask1/Retinanet-face_mask_detection"


@dataclass(frozen=True)
class Member:
    """A file an artifact provides, relative to the models folder, with its published hash if any."""

    path: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Artifact:
    """One downloadable file: a model pack (zip, unpacked into ``folder``) or a single weights file."""

    name: str
    filename: str  # name of the downloaded file (also the name looked for by --from DIR)
    url: str | None  # direct public URL; None = manual download only
    sha256: str | None = None  # published SHA-256 of the downloaded file
    size: int | None = None  # published size in bytes
    folder: str | None = None  # archives: unpacked into <models dir>/<folder>/
    members: tuple[Member, ...] = ()  # the files it provides (a single file: just itself)
    models: tuple[str, ...] = ()  # registry names it provides
    manual: str = ""  # how to get it by hand ({dir} = the models folder)
    note: str = ""  # licence / provenance note printed after a download
    extra: dict = field(default_factory=dict)

    @property
    def is_archive(self) -> bool:
        """True for zip packs that are unpacked after download."""
        return self.folder is not None


def _iresnet(depth: int, paper: str) -> Artifact:
    name = f"iresnet{depth}"
    return Artifact(
        name=name,
        filename=f"{name}.pth",
        url=None,
        members=(Member(f"{name}.pth"),),
        models=(name,),
        manual=(
            f"arcface_torch publishes its IResNet-r{depth} checkpoints ({paper}) only on OneDrive / Baidu "
            f"pages linked from its model zoo ({ARCFACE_TORCH_ZOO}), with no direct URL. Download a "
            f"backbone.pth there and put it at {{dir}}/{name}.pth (or {{dir}}/{name}/backbone.pth), or run "
            f"`mf2m models fetch {name} --from /path/to/backbone.pth`."
        ),
        note=INSIGHTFACE_LICENSE,
    )


CATALOG: dict[str, Artifact] = {
    a.name: a
    for a in [
        Artifact(
            name="buffalo_l",
            filename="buffalo_l.zip",
            url=f"{INSIGHTFACE_RELEASE}/buffalo_l.zip",
            sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
            size=288_621_354,
            folder="buffalo_l",
            members=(
                Member(
                    "buffalo_l/w600k_r50.onnx",
                    "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
                    174_383_860,
                ),
                Member(
                    "buffalo_l/det_10g.onnx",
                    "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
                    16_923_827,
                ),
                Member(
                    "buffalo_l/2d106det.onnx",
                    "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf",
                    5_030_888,
                ),
            ),
            models=("w600k_r50", "scrfd", "2d106"),
            manual=f"Download {INSIGHTFACE_RELEASE}/buffalo_l.zip and unpack it into {{dir}}/buffalo_l/.",
            note=INSIGHTFACE_LICENSE,
        ),
        Artifact(
            name="antelopev2",
            filename="antelopev2.zip",
            url=f"{INSIGHTFACE_RELEASE}/antelopev2.zip",
            sha256="8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5",
            size=360_662_982,
            folder="antelopev2",
            members=(
                Member(
                    "antelopev2/glintr100.onnx",
                    "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf",
                    260_665_334,
                ),
                Member(
                    "antelopev2/scrfd_10g_bnkps.onnx",
                    "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
                    16_923_827,
                ),
            ),
            models=("glintr100",),
            manual=f"Download {INSIGHTFACE_RELEASE}/antelopev2.zip and unpack it into {{dir}}/antelopev2/.",
            note=INSIGHTFACE_LICENSE,
        ),
        Artifact(
            name="retinanet-facemask",
            filename="csv_retinanet50_140epochs.pt",
            url=None,
            members=(Member("csv_retinanet50_140epochs.pt"),),
            models=("retinanet-facemask",),
            manual=(
                "The paper's RetinaNet face-mask checkpoint is published only on Baidu Pan "
                "(https://pan.baidu.com/s/11WEDRXtzm3dZlwJWPaB4Yg, extraction code nmgb), linked from "
                f"{RETINANET_REPO}, with no direct URL. Download csv_retinanet50_140epochs.pt there and put it "
                "into {dir}/, or run `mf2m models fetch retinanet-facemask --from /path/to/"
                "csv_retinanet50_140epochs.pt`."
            ),
            note=f"from {RETINANET_REPO} (no licence stated there)",
        ),
        *[
            _iresnet(d, paper)
            for d, paper in (
                (18, "ms1mv3/glint360k"),
                (34, "the paper's CosFace-R34"),
                (50, "the paper's ArcFace-R50 / CosFace-R50"),
                (100, "ms1mv3/glint360k"),
                (200, "webface42m"),
            )
        ],
    ]
}


def resolve(name: str) -> Artifact:
    """The artifact for an artifact name or a registry model name; ``ValueError`` naming the choices."""
    if name in CATALOG:
        return CATALOG[name]
    for art in CATALOG.values():
        if name in art.models:
            return art
    raise ValueError(f"nothing to fetch for {name!r}. Fetchable names: {', '.join(fetchable_names())}")


def fetchable_names() -> list[str]:
    """Every name ``fetch`` accepts: artifacts and the models they provide."""
    names: list[str] = []
    for art in CATALOG.values():
        for n in (art.name, *art.models):
            if n not in names:
                names.append(n)
    return names


def published_hashes() -> set[str]:
    """Every SHA-256 the catalogue pins (downloads and the files in them)."""
    out = {a.sha256 for a in CATALOG.values() if a.sha256}
    out |= {m.sha256 for a in CATALOG.values() for m in a.members if m.sha256}
    return out
