"""warpserve package."""
