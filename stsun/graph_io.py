"""Names of the deployed graph's tensors, shared by every exporter, backend and server model."""
INPUT_NAME = "x"           # (B, T_in, C_in, H, W) float32, scaled as the profile says
OUTPUT_NAME = "logits"     # (B, T_out, C_out, H, W) float32
DN_INPUT_NAME = "dn"       # (B, T_in, C_in, H, W) raw digital numbers, the profile's scaling.dtype
CLASSES_OUTPUT_NAME = "classes"  # (B, bands, H, W) the class/change bands `stsun predict` writes
