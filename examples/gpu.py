"""A GPU activity on a worker pool: the pool of queue "gpu" holds one GPU per worker for its
whole life, so each attempt starts at once on a warm worker (no Ray task to schedule, no
model to load again).

Run it with ``python examples/gpu.py`` on a machine (or Ray cluster) with a GPU. Where Ray
sees none, it says so and stops: a worker that asks for a GPU no node has would wait forever
(Ray keeps such an actor pending without an error).
"""

from __future__ import annotations

import asyncio
import os

import ray

import duraflow as df


@df.activity(queue="gpu", start_to_close_timeout="5m")
def embed(texts: list[str]) -> dict[str, object]:
    """Stands in for model inference: reports the GPU Ray gave this worker."""
    return {
        "texts": len(texts),
        "gpu_ids": ray.get_gpu_ids(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "worker_pid": os.getpid(),
    }


@df.workflow
async def embed_batches(ctx: df.WorkflowContext, batches: list[list[str]]) -> list[dict]:
    return list(await asyncio.gather(*(ctx.activity(embed, batch) for batch in batches)))


def main() -> None:
    ray.init(include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus == 0:
        print(
            "Ray sees no GPU here, so a pool of workers with num_gpus=1 could never start. "
            "On a machine with a GPU this example starts one worker per GPU "
            '(df.Engine(workers={"gpu": df.WorkerPool(size=N, num_gpus=1)})) and runs '
            "@df.activity(queue='gpu') attempts on them."
        )
        return
    pools = {"gpu": df.WorkerPool(size=gpus, num_gpus=1)}
    with df.Engine(".duraflow-gpu", workers=pools) as engine:
        batches = [[f"text {i}-{j}" for j in range(8)] for i in range(2 * gpus)]
        result = engine.client().start(embed_batches, batches).result(timeout=600)
        for line in result:
            print(line)


if __name__ == "__main__":
    main()
