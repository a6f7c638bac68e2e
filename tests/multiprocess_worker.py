"""One of two processes normalizing one global batch over 2 × 4 CPU devices.

Run by test_multidevice.py: python multiprocess_worker.py PROCESS_ID PORT OUT.npz
"""

import sys

import jax


def main(process_id: int, port: int, out_path: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
    )
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    from multidevice_checks import MASK, PARAMS, STATE, X

    import bnjax

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = jax.make_mesh((8,), ("d",))
    sharding = NamedSharding(mesh, P("d"))
    x, mask = X.reshape(-1, 3, 5), MASK.reshape(-1, 3, 1)
    xs = jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    ms = jax.make_array_from_callback(mask.shape, sharding, lambda index: mask[index])

    def loss(x, mask):
        y, state = bnjax.batch_norm(x, PARAMS, STATE, True, mask=mask, unbiased=True,
                                    momentum=0.9)  # fmt: skip
        return jax.numpy.sum(jax.numpy.sin(y)), (y, state)

    with jax.set_mesh(mesh):
        (_, (y, state)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(xs, ms)
    y, grad = multihost_utils.process_allgather((y, grad), tiled=True)
    if process_id == 0:
        np.savez(out_path, y=y, grad=grad, mean=np.asarray(state.mean), var=np.asarray(state.var))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
