"""Manual two-round curation of image sets (a keyboard-driven page served on localhost)."""
