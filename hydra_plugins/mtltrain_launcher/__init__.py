"""mtltrain's Hydra launcher: `hydra/launcher=vectorized` (see vectorized_launcher)."""
