"""Applications on top of the library: the `elt` command, the local web demo and the benchmark."""
