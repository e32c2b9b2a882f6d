"""Images: header probing, safe decoding and reading bytes from wherever they live."""

from sqlvision.imaging.decode import DECODE_RULE, DECODE_RULES, decode, decode_array
from sqlvision.imaging.probe import DEFAULT_MAX_PIXELS, ImageInfo, check_pixels, probe

__all__ = ["DECODE_RULE", "DECODE_RULES", "DEFAULT_MAX_PIXELS", "ImageInfo", "check_pixels",
           "decode", "decode_array", "probe"]
