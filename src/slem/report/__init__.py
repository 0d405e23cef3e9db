"""Reports of runs: plots (PNG) and tables."""
