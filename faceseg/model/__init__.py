"""The U-Net (tf-keras), its losses, and safe loading of saved models."""
from faceseg.model.unet import build_unet, load_model

__all__ = ["build_unet", "load_model"]
