"""tlvision: transfer learning from a pretrained ConvNet to your folder of labelled images."""

__version__ = "0.1.0"
