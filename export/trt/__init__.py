"""Everything TensorRT, in one place: whether it is usable here and on which GPU (``env``),
the ONNX compatibility check that runs without it (``compat``), the attention plugin
(``plugin``), the plan build (``plan``) and running a plan (``runner``). Only this package
imports ``tensorrt``; the ``tensorrt`` runtime backend wraps ``runner``."""
