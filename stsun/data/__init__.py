"""Data: synthetic scenes, datasets on disk, training targets, and the demo workspace."""
