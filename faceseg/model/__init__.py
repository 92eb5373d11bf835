"""The U-Net (`unet`), its losses (`losses`), and saved models (`saved`, importable without TensorFlow)."""
