"""rgbd-portrait: joint learning of depth and appearance for portrait images."""

__version__ = "0.1.0"
