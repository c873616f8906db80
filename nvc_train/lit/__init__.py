"""Lightning integration: the LightningModule wrapping SSF and its callbacks."""
