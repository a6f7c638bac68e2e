"""What is timed: the modes, and the bytes batch norm must move in each."""

MODES = ("fwd", "fwd+bwd", "eval")  # the modes written to --json
FUSED = "fwd+bwd (1 jit)"  # printed only
ALL_MODES = ("fwd", "fwd+bwd", FUSED, "eval")  # the printed order

# Bytes batch norm must move, in passes over x's bytes. The training forward reads x for the
# statistics, then reads x and writes y; inference reads x and writes y; the backward reads x and
# dy for the gradient's statistics, then reads x and dy again and writes dx.
FORWARD_PASSES = 3
EVAL_PASSES = 2
BACKWARD_PASSES = 5
PASSES = {
    "fwd": FORWARD_PASSES,
    "fwd+bwd": FORWARD_PASSES + BACKWARD_PASSES,
    FUSED: FORWARD_PASSES - 1 + BACKWARD_PASSES,  # y is not an output there: it is not written
    "eval": EVAL_PASSES,
}
