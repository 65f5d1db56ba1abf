"""Data only: the bundled models' weights, tokenizers, model cards and metrics, the draft's shipped ATTS
calibration sets, the v2 family's profile. No code lives here (the recipes that write it are ``training/``);
this file makes ``models`` a package only so that the wheel ships these files as its package data."""
