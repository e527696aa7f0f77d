"""Masking and adversarial attacks: solid mask, DM, AdvNoise-DM, MF²M and the FGSM-family baselines."""
