"""Console scripts. Each ``main`` turns user errors into one line on stderr and a non-zero exit."""
