"""Run the rollout controller in its own process (tests kill it with SIGKILL mid-step).

    python tests/e2e/rollout_controller.py STORE PROMETHEUS_URL APP_NAME
The rollout spec is read from the store, which `start_rollout` wrote.
"""

import sys

if __name__ == "__main__":
    from corral.cluster.spec.rollout import RolloutSpec
    from corral.rollout.actuators import LocalServeActuator
    from corral.rollout.controller import Controller
    from corral.rollout.metrics import PrometheusMetricSource
    from corral.rollout.store import FileStore
    from corral.serving.prometheus import PrometheusClient

    store_path, prom_url, app_name = sys.argv[1:4]
    store = FileStore(store_path)
    spec = RolloutSpec.model_validate(store.load().spec)
    controller = Controller(spec, {spec.baseline: 1, spec.candidate: 1},
                            PrometheusMetricSource(PrometheusClient(prom_url)), LocalServeActuator(app_name), store,
                            rollout_id=store.load().id, tick_s=1)
    state = controller.run(max_ticks=600)
    print(state.phase.value, flush=True)
