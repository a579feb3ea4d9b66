"""Models: the online FTRL-Proximal delta layer and the model registry."""
