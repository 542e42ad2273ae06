# The rollout controller: Python and corral[kube] only (no Ray, no vLLM), running as a non-root user.
#
#   docker build -f docker/controller.Dockerfile -t REGISTRY/corral-controller:0.1.0 .
#
# tests/e2e/test_controller_image.py runs this image's install line in a fresh virtualenv.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /dist .

FROM python:3.11-slim
COPY --from=wheel /dist/ /tmp/dist/
# install-line
RUN pip install --no-cache-dir "$(ls /tmp/dist/corral-*.whl)[kube]" && rm -rf /tmp/dist
# uid/gid as the chart's podSecurityContext (runAsUser 1000, runAsGroup 100).
RUN useradd --uid 1000 --gid 100 --no-create-home --shell /usr/sbin/nologin corral
USER 1000:100
WORKDIR /tmp
ENTRYPOINT ["corral"]
CMD ["--help"]
