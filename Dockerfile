# CPU image of the `search` service: `docker build -t search .`, then e.g.
# `docker run --rm search --help`. docker-compose.yml builds and runs it.
#
# GPU image: `docker build --build-arg GPU=true -t search:gpu .` (NVIDIA container toolkit on
# the host; run with `--gpus`). It installs `tensorflow[and-cuda]` (TensorFlow with its CUDA
# libraries from pip) in place of `tensorflow-cpu`, which pyproject asks for on x86_64 Linux and
# which must not sit next to it (both install the same module). Never built or run on a GPU
# by this project: see docs/many-machines.md#gpus.

# Bookworm, not the floating slim tag, whose Debian release changes: bookworm has the
# dataset-fashion-mnist package installed below.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# Fashion-MNIST from Debian (/usr/share/datasets/fashion-mnist), so that workers never download
# it: eight workers starting at once would each fetch it, and some hosts have no internet.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that editing the code does not reinstall
# TensorFlow (hundreds of MB): this layer is rebuilt only when pyproject.toml changes.
ARG GPU=false
COPY pyproject.toml ./
RUN python -c "import tomllib; \
        project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > requirements.txt \
    && if [ "$GPU" = true ]; then \
        sed -i '/^tensorflow-cpu/d' requirements.txt \
        && pip install "tensorflow[and-cuda]>=2.21,<3"; \
    fi \
    && pip install -r requirements.txt

COPY README.md ./
COPY search/ search/
COPY spaces/ spaces/
RUN pip install --no-deps . && rm -rf build *.egg-info requirements.txt

COPY studies/ studies/

# A fixed uid, so that the host can grant it read access to bind-mounted secrets. It owns the
# working directory (not the files in it) so that outputs written relative to it (runs/) work.
RUN useradd --uid 10001 --create-home --home-dir /home/search --shell /usr/sbin/nologin search \
    && chown search:search /app
USER search

ENTRYPOINT ["search"]
CMD ["--help"]
