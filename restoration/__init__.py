"""Restoration: networks (`restoration.nets`), paired data (`restoration.pairs`), training with L2 and
optionally DiffLoss (`python -m restoration.train`), checkpoints (`restoration.checkpoint`), restoring a CUB
root (`python -m restoration.restore`) and the PSNR/SSIM they report (`restoration.metrics`)."""
