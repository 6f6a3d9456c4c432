"""Measurements of masks (per lesion) and metrics against a reference (Dice, NSD, HD95, lesion-wise)."""
