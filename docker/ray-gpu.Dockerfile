# Ray head and GPU worker image of the Helm chart: Ray's LLM image (Ray 2.60, its matching CUDA vLLM)
# plus corral with the extras a cluster needs (gpu: ray[serve,llm]; kube: the kubernetes client).
#
#   docker build -f docker/ray-gpu.Dockerfile -t REGISTRY/corral:0.1.0-ray2.60.0-gpu .
#
# Ray image tags read {ray version}-{python}-{cuda}; the Python (3.11) must match corral's wheel.
ARG RAY_IMAGE=rayproject/ray-llm:2.60.0-py311-cu128

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /dist .

FROM ${RAY_IMAGE}
# The image's `ray` user (uid 1000, gid 100): the chart's securityContext runs as it.
USER 1000:100
COPY --from=wheel --chown=1000:100 /dist/ /tmp/dist/
# ray[serve,llm] is already installed at this version; naming it pins it, so pip only adds corral and
# the kubernetes client (nothing of Ray or vLLM is upgraded).
RUN pip install --no-cache-dir "$(ls /tmp/dist/corral-*.whl)[gpu,kube]" "ray[serve,llm]==2.60.0" \
    && rm -rf /tmp/dist
