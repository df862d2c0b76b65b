"""Serving with Triton Inference Server: the model repository a build becomes (``repository``),
the python-backend model inside it (``python_model``, self-contained), the server launcher
(``server``), and the ``triton`` backend that sends tiles to a running server (``client``)."""
