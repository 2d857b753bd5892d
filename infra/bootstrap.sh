#!/usr/bin/env bash
# Install what Herald needs on a Debian machine, once: Java 17+, Maven, PostgreSQL, a Python 3.11+
# virtual environment with Herald in it. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)  # `herald up --monitoring`
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]} from Debian's packages…"
  # Debian's postgresql package would create and start a cluster on 5432; Herald runs its own.
  mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf \
    || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus package enables its own service on :9090; Herald starts its own Prometheus there
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# The schema registry (Apicurio 3.3) needs Java 21+; Kafka runs on 17+. Debian 12 packages only 17.
java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
has_java21() {
  for j in ${HERALD_JAVA:-} ${JAVA_HOME:+$JAVA_HOME/bin/java} $(command -v java) /usr/lib/jvm/*/bin/java; do
    [ -x "$j" ] && [ "$(java_major "$j")" -ge 21 ] 2>/dev/null && return 0
  done
  return 1
}
if ! has_java21; then
  for pkg in openjdk-25-jre-headless openjdk-21-jre-headless; do
    if [ "$(id -u)" -eq 0 ] && apt-cache show "$pkg" >/dev/null 2>&1; then
      say "installing $pkg for the schema registry…"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null && break
    fi
  done
  has_java21 || { say "the schema registry needs Java 21 or newer and none was found: install a JDK 21+ (e.g. Temurin) and set HERALD_JAVA to its java binary"; exit 1; }
fi

# The inbox page's browser test (make test) drives Debian's Chromium through chromium-driver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing chromium and chromium-driver for the browser test…"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/dev/null \
      || say "could not install chromium; the browser test will fail until: apt-get install -y chromium chromium-driver"
  else
    say "the browser test needs: sudo apt-get install -y chromium chromium-driver"
  fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "Herald needs Python 3.11 or newer; found $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11"
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment in .venv…"
  "$PYTHON" -m venv .venv || { say "python venv failed: apt-get install -y python3-venv"; exit 1; }
fi
stamp=.venv/.herald-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing Herald and its Python packages into .venv (first run only)…"
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[test,bench]"; } \
       > .venv/install.log 2>&1; then
    tail -30 .venv/install.log >&2
    say "installing the Python packages failed (full log: .venv/install.log)"
    exit 1
  fi
  touch "$stamp"
fi
