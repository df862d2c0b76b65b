"""Serving with Triton Inference Server: the model repository a build becomes (``repository``),
the python-backend model inside it (``python_model``, self-contained), the server launcher
(``server``), the public HTTP front (``guard``, reading requests with ``requests``), ``stsun serve``
(``supervisor``), and the ``triton`` backend that sends tiles to a running server (``client``)."""
