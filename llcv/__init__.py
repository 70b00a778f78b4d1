"""llcv."""
