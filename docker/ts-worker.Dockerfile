# syntax=docker/dockerfile:1.7
# The TS worker: `vlmflow worker` (workflows + GPU-queue activities) on Node 22 LTS with production
# dependencies only; non-root. TypeScript runs through tsx (a runtime dependency); the workflow bundle is built
# with the image (`vlmflow bundle`), so the worker starts fast and runs exactly the workflow code it was built with.
#   docker build -f docker/ts-worker.Dockerfile -t vlmflow/ts-worker .      (from the repository root)
ARG NODE_IMAGE=node:22-bookworm-slim

# 1. Production dependencies, from package.json + package-lock.json only (rebuilt when they change).
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund

# 2. The runtime: dependencies, then the code (the layer that changes most, last).
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
RUN groupadd --gid 10001 vlmflow \
    && useradd --uid 10001 --gid vlmflow --create-home --shell /usr/sbin/nologin vlmflow
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
COPY activities ./activities
COPY workflows ./workflows
RUN node bin/vlmflow.js bundle /app/workflow-bundle.js
ENV VLMFLOW_WORKFLOW_BUNDLE=/app/workflow-bundle.js
USER vlmflow
# Same uid as the Python image, so files in the shared volumes (certs, artifacts) are readable by both.
ENTRYPOINT ["node", "bin/vlmflow.js"]
CMD ["worker"]
