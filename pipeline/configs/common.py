"""Choices several stage configs share: the device and the pooled embedding of a frame."""

DEVICES = ("auto", "cpu", "cuda")
# cls: the class token; mean: the mean of the patch tokens (MAE's fine-tuning pooling). Both taken after the
# encoder's final norm, as timm's ViT does.
POOL_MODES = ("cls", "mean")
