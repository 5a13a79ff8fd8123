"""Input drift: a version's reference histograms of its training inputs, rolling
histograms of what it is served, and PSI / KS statistics between the two."""
