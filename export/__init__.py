"""Export: folded model -> ONNX (fp32/fp16/int8), AOTInductor package, TensorRT; fidelity checks."""
import warnings

# torch.export deep-copies pytree specs, and torch 2.13 deprecates its own isinstance check in
# there: a FutureWarning on every build that no caller can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
