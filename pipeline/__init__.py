"""Core of structkd: readers, labels, encoder, CRF kernels and layer, models, losses, training."""
