"""The paper's published numbers (Zhu et al., "Masked Faces with Faced Masks"), copied exactly.

Table 1 (white-box: probes attacked and evaluated on ArcFace IResNet-50, MegaFace 1M distractors,
FaceScrub 80 identities / 3,530 probes): Rank-1, "Veri." (TAR at 1e-6 FAR), AUC, mask detection rate.
The unmasked Rank-1 (0.98) and the PSNR/SSIM of AdvNoise-DM and MF²M against DM (38.76/0.9808 and
40.45/0.9812) are given in the text of Section 4.2, not in the table.

Table 2 (black-box: the same masked probes evaluated on CosFace ResNet50 and ResNet34).
"""

from __future__ import annotations

#: method ids used everywhere in the report, in the paper's row order (``none`` = unmasked probes)
METHOD_ORDER = (
    "none",
    "solid",
    "fgsm",
    "i-fgsm",
    "mi-fgsm",
    "ti-fgsm",
    "ti-mi-fgsm",
    "di2-fgsm",
    "m-di2-fgsm",
    "dm",
    "advnoise-dm",
    "mf2m",
)

#: display names of the methods (the paper's row labels)
METHOD_LABELS = {
    "none": "No mask",
    "solid": "Solid-color",
    "fgsm": "FGSM",
    "i-fgsm": "I-FGSM",
    "mi-fgsm": "MI-FGSM",
    "ti-fgsm": "TI-FGSM",
    "ti-mi-fgsm": "TI-MI-FGSM",
    "di2-fgsm": "DI²-FGSM",
    "m-di2-fgsm": "M-DI²-FGSM",
    "dm": "DM",
    "advnoise-dm": "AdvNoise-DM",
    "mf2m": "MF²M",
}

#: the setting of the paper's experiments (used in captions and to decide whether numbers are comparable)
PAPER_SETTING = {
    "data": "MegaFace Challenge 1: FaceScrub subset (80 identities, 3,530 probes) vs 1M distractors",
    "probes": 3530,
    "identities": 80,
    "distractors": 1_000_000,
    "white_box": "ArcFace IResNet-50 (arcface_torch)",
    "mask_detector": "RetinaNet face-mask detector (simpletask1)",
    "templates": "3,136 StyleGAN faces",
}

#: Table 1 rows: method → {rank1, tar (TAR@1e-6 FAR), auc, mask_rate (fraction), psnr, ssim}; None = not given
TABLE1: dict[str, dict[str, float | None]] = {
    "none": {"rank1": 0.98, "tar": None, "auc": None, "mask_rate": None, "psnr": None, "ssim": None},
    "solid": {"rank1": 0.7389, "tar": 0.7470, "auc": 0.9986, "mask_rate": 0.9053, "psnr": None, "ssim": None},
    "fgsm": {"rank1": 0.4895, "tar": 0.4924, "auc": 0.9950, "mask_rate": 0.6210, "psnr": None, "ssim": None},
    "i-fgsm": {"rank1": 0.0039, "tar": 0.0026, "auc": 0.7594, "mask_rate": 0.3941, "psnr": None, "ssim": None},
    "mi-fgsm": {"rank1": 0.0179, "tar": 0.0135, "auc": 0.8667, "mask_rate": 0.4391, "psnr": None, "ssim": None},
    "ti-fgsm": {"rank1": 0.4991, "tar": 0.5053, "auc": 0.9950, "mask_rate": 0.6600, "psnr": None, "ssim": None},
    "ti-mi-fgsm": {"rank1": 0.0364, "tar": 0.0290, "auc": 0.8998, "mask_rate": 0.5197, "psnr": None, "ssim": None},
    "di2-fgsm": {"rank1": 0.0690, "tar": 0.0601, "auc": 0.9193, "mask_rate": 0.4351, "psnr": None, "ssim": None},
    "m-di2-fgsm": {"rank1": 0.0705, "tar": 0.0623, "auc": 0.9293, "mask_rate": 0.4550, "psnr": None, "ssim": None},
    "dm": {"rank1": 0.5146, "tar": 0.5154, "auc": 0.9956, "mask_rate": 0.2774, "psnr": None, "ssim": None},
    "advnoise-dm": {
        "rank1": 1.35e-5,
        "tar": 1.35e-5,
        "auc": 0.4163,
        "mask_rate": 0.0730,
        "psnr": 38.76,
        "ssim": 0.9808,
    },
    "mf2m": {"rank1": 1.35e-5, "tar": 2.02e-5, "auc": 0.4093, "mask_rate": 0.0695, "psnr": 40.45, "ssim": 0.9812},
}

#: Table 2: evaluation model → method → {rank1, tar, auc}
TABLE2_MODELS = {"cosface-r50": "CosFace ResNet50", "cosface-r34": "CosFace ResNet34"}
TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "cosface-r50": {
        "solid": {"rank1": 0.8207, "tar": 0.8233, "auc": 0.9991},
        "fgsm": {"rank1": 0.7585, "tar": 0.7624, "auc": 0.9988},
        "i-fgsm": {"rank1": 0.6720, "tar": 0.6752, "auc": 0.9978},
        "mi-fgsm": {"rank1": 0.6419, "tar": 0.6445, "auc": 0.9972},
        "ti-fgsm": {"rank1": 0.7640, "tar": 0.7711, "auc": 0.9988},
        "ti-mi-fgsm": {"rank1": 0.6416, "tar": 0.6438, "auc": 0.9972},
        "di2-fgsm": {"rank1": 0.7178, "tar": 0.7222, "auc": 0.9983},
        "m-di2-fgsm": {"rank1": 0.6559, "tar": 0.6592, "auc": 0.9974},
        "dm": {"rank1": 0.6400, "tar": 0.6520, "auc": 0.9971},
        "advnoise-dm": {"rank1": 0.0726, "tar": 0.0723, "auc": 0.9293},
        "mf2m": {"rank1": 0.0674, "tar": 0.0670, "auc": 0.9237},
    },
    "cosface-r34": {
        "solid": {"rank1": 0.7641, "tar": 0.7697, "auc": 0.9987},
        "fgsm": {"rank1": 0.7147, "tar": 0.7212, "auc": 0.9984},
        "i-fgsm": {"rank1": 0.6243, "tar": 0.6303, "auc": 0.9967},
        "mi-fgsm": {"rank1": 0.6020, "tar": 0.6077, "auc": 0.9961},
        "ti-fgsm": {"rank1": 0.7142, "tar": 0.7214, "auc": 0.9984},
        "ti-mi-fgsm": {"rank1": 0.5996, "tar": 0.6038, "auc": 0.9958},
        "di2-fgsm": {"rank1": 0.6699, "tar": 0.6777, "auc": 0.9977},
        "m-di2-fgsm": {"rank1": 0.6165, "tar": 0.6242, "auc": 0.9963},
        "dm": {"rank1": 0.5987, "tar": 0.6126, "auc": 0.9971},
        "advnoise-dm": {"rank1": 0.0657, "tar": 0.0622, "auc": 0.9310},
        "mf2m": {"rank1": 0.0546, "tar": 0.0508, "auc": 0.9212},
    },
}
