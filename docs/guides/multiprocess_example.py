"""One of two processes that normalize one global batch together (run: PROCESS_ID PORT)."""

import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import bnjax

process_id, port = int(sys.argv[1]), int(sys.argv[2])
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts only
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
)

mesh = jax.make_mesh((jax.device_count(),), ("batch",))  # every process's devices
rows = np.random.default_rng(0).normal(3.0, 2.0, (16, 4)).astype(np.float32)  # global batch
local = rows[8 * process_id : 8 * (process_id + 1)]  # the rows this process loads
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), local)
params, state = bnjax.init(4)

with jax.set_mesh(mesh):
    y, new_state = jax.jit(lambda x: bnjax.batch_norm(x, params, state, True, momentum=0.0))(x)
if process_id == 0:
    print(np.asarray(new_state.mean).tolist())  # the global batch's mean, on every process
jax.distributed.shutdown()
