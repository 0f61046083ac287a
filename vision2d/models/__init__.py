"""Model families; importing registers each family's models with timm."""
