# The metering-sidecar image: slim, non-root, read-only root filesystem, SIGTERM to the sidecar itself.
#
# Build it with `scripts/build_image.py`, which first puts the wheels in build/wheels (pip inside a build
# cannot reach PyPI here, so the host builds them) and then runs `docker build`. BASE_IMAGE is the
# official slim Python by default; the tests build from a local Debian bookworm made with debootstrap
# (`metering-base:bookworm`, Python 3.11 too). Both stages use it, so the venv's python symlink holds.
#
# At run time only /var/lib/metering (the ledger: an emptyDir in pods, a VOLUME here) is written.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# So that scripts/build_image.py can find the build stages of earlier builds and remove them.
LABEL metering-sidecar.stage="build"
ARG VERSION=0.1.0
COPY build/wheels/ /wheels/
# The runtime dependencies and the sidecar, from the wheelhouse only (no index, no compiler; the wheels'
# shared libraries are already stripped). The kubernetes client is not here at all: only `inject` uses
# it, on a seller's machine (the `inject` extra). Then what the sidecar never reads goes:
# - pip and setuptools: nothing is installed at run time.
# - botocore's models of every AWS service but the two it calls (meteringmarketplace; sts for IRSA's
#   AssumeRoleWithWebIdentity), and their lines in botocore's RECORD (0.2 MB of them). The top-level
#   endpoints.json (gzipped, below), partitions.json, _retry.json and sdk-default-configuration.json stay.
# - boto3/data: boto3's resource models, read by session.resource() only; the sidecar uses clients.
# - *.pyi, *.pyx, *.pxd: type stubs and Cython sources, for type checkers and compilers only.
# endpoints.json is gzipped (1.25 MB to 50 kB): botocore's loader reads NAME.json.gz as it reads
# NAME.json (its service models ship that way).
# The .pyc files are compiled here, so that a read-only container does not recompile them at every
# start (~1 s of `run`'s start). PYTHONNODEBUGRANGES leaves out their column tables (0.9 MB, and less
# memory): tracebacks keep their files and lines, they lose only the ^^^ markers. No .pyc for cffi,
# pycparser and idna (0.9 MB), which the sidecar never imports: the first two only build cryptography's
# bindings, idna is for non-ASCII host names. Imported after all, a module is compiled in memory: the
# same behaviour, once slower.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir --no-index --only-binary=:all: --no-compile \
        --find-links /wheels "metering-sidecar==${VERSION}" \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && sp="$(echo /opt/venv/lib/python3*/site-packages)" \
    && find "$sp/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name meteringmarketplace ! -name sts \
        -exec rm -rf {} + \
    && sed -i -E '\#^botocore/data/[^/]+/#{\#^botocore/data/(meteringmarketplace|sts)/#!d}' \
        "$sp"/botocore-*.dist-info/RECORD \
    && gzip -9 -n "$sp/botocore/data/endpoints.json" \
    && rm -rf "${sp:?}"/boto3/data/* \
    && find "$sp" \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' \) -delete \
    && PYTHONNODEBUGRANGES=1 /opt/venv/bin/python -m compileall -q \
        -x '/site-packages/(cffi|pycparser|idna)/' "$sp"

FROM ${BASE_IMAGE}

# uid/gid 65532, numeric in USER so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN groupadd --system --gid 65532 metering \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin metering \
    && mkdir -p /var/lib/metering \
    && chown 65532:65532 /var/lib/metering \
    && chmod 0700 /var/lib/metering

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    METERING_STATE_DIR=/var/lib/metering

# The ledger: an emptyDir in pods; a tmpfs or a volume with `docker run --read-only`. On ECS, a task
# volume mounted here gets this directory's content and owner (ECS copies a VOLUME path into it).
VOLUME ["/var/lib/metering"]
WORKDIR /var/lib/metering
USER 65532:65532

# The probe port, when METERING_PROBE_LISTEN=0.0.0.0:8788 (the Helm chart and manifests set it). The API
# itself listens on 127.0.0.1:8787, which only the containers of the same pod or task can reach.
EXPOSE 8788

# Liveness for plain Docker (Kubernetes and ECS use their own probes): /healthz on the probe listener if
# one is set, else on the API listener, from METERING_PROBE_LISTEN / METERING_LISTEN. No curl in slim
# images, so Python's urllib; a wildcard address is asked on loopback.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; h, _, p = (os.environ.get('METERING_PROBE_LISTEN') or os.environ.get('METERING_LISTEN') or '127.0.0.1:8787').strip().rpartition(':'); h = h.strip('[]'); h = {'0.0.0.0': '127.0.0.1', '': '127.0.0.1', '::': '::1'}.get(h, h); h = f'[{h}]' if ':' in h else h; u.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]

# Exec form: the sidecar is PID 1 and gets SIGTERM itself, seals the current hour and sends it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["metering-sidecar"]
CMD ["run"]

# Last, so that a new revision does not invalidate the cached layers above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="metering-sidecar" \
      org.opencontainers.image.description="AWS Marketplace metering sidecar: RegisterUsage at start, hourly MeterUsage, a localhost API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
