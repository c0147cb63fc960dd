"""cordon worker."""
