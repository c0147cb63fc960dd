"""cordon host runtime."""
