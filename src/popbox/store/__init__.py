"""Mail stores: where maildrops live. `base` holds the protocol every backend implements."""
