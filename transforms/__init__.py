"""Feature transforms defined once, shared by batch training and streaming serving."""
