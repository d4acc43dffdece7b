"""Policy classes: functional (parameters passed as a flat vector) so they compose with torch.func."""
