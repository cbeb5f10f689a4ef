#!/usr/bin/env bash
# Checks the deployment files in deploy/ without deploying anything (no Docker engine, no
# systemd as PID 1, no running msgd needed). Exit 0 when every check passes, 1 otherwise; each
# check prints one `ok` or `FAIL` line. Run by scripts/test.sh (the whole suite, CI); on its own:
#
#   scripts/deploy-check.sh
#
# What it verifies:
#  1. systemd: `systemd-analyze verify` on every deploy/*.service and *.timer, in a temp copy
#     whose /usr/local/bin/msgd is replaced by an executable that exists (verify refuses a unit
#     whose binary is missing); any warning (an unknown or misspelt key, a value that does not
#     parse, a timer naming no unit) fails it, not only errors. `systemd-analyze security
#     --offline` bounds each service's exposure score (msgd.service <= 2.0, the batch units <= 3.5).
#     Not covered: that the units start (user msgd, /etc/msgd, the binary on a real host).
#  2. The units' content: user msgd, NoNewPrivileges, ProtectSystem=strict, ReadWritePaths,
#     the env file, LimitNOFILE above load/vps.toml's http.max_connections + 64, TimeoutStopSec
#     above http.shutdown_timeout, each timer's Unit= existing.
#  3. Every MSGD_* name in deploy/msgd.env.example, the units, compose.yaml's msgd service and the
#     Dockerfile is a real msgd config key: the key tree is read from src/config.rs (the structs
#     serde deserializes the file into), as msgd maps MSGD_A__B to a.b. The env template holds
#     placeholders (CHANGE_ME), no secrets.
#  4. deploy/compose.yaml parsed as YAML (python3-yaml): the services msgd, postgres, redis,
#     minio (+ minio-setup, caddy), pinned images, a healthcheck on every long-running service,
#     depends_on targets and conditions (service_healthy only on services with a healthcheck),
#     bind-mount sources that exist (load/vps-*.conf: one canonical copy), declared volumes,
#     ports published on loopback only (Caddy's 80/443 aside), every ${VAR} without a default
#     defined in deploy/compose.env.example. Not covered: `docker compose config` semantics
#     beyond these (no compose plugin here) and pulling or running the images.
#  5. deploy/Dockerfile parsed instruction by instruction: a named build stage from a Rust image
#     running `cargo build --release --locked`, copying every path Cargo.toml's targets and the
#     sqlx migrations need (and deploy/Dockerfile.dockerignore letting each through), a
#     debian-slim or distroless final stage with a non-root USER, the binary copied from the
#     build stage, EXPOSE matching MSGD_HTTP__LISTEN, a HEALTHCHECK on a route msgd serves.
#     Not covered: that the image builds (no engine).
#  6. deploy/Caddyfile: `caddy validate` and `caddy fmt` clean (Debian's caddy package, extracted,
#     not installed); its adapted JSON proxies to load/vps.toml's http.listen and hides /metrics
#     and /v1/admin.
#  7. deploy/nginx-msgd.conf: `nginx -t` inside a test nginx.conf with throwaway certificates
#     (Debian's nginx, extracted, not installed); /v1/ws upgrades, with proxy timeouts above
#     ws.idle_timeout; /metrics and /v1/admin are hidden.
#  8. deploy/minio-setup.sh: `sh -n`, then run against a stub `mc` that records its calls: the
#     bucket, the policy (valid JSON, naming the bucket), the user, the attachment; a rerun
#     succeeds; an unexpected mc error fails it.
#  9. With a built msgd (MSGD_BIN, else target/release/msgd or target/debug/msgd, as after
#     `cargo test`): `msgd config --check` accepts load/vps.toml with deploy/msgd.env.example's
#     variables, and with compose.yaml's msgd environment. Skipped, and said so, without one.
#
# Missing tools are installed as scripts/services.sh does (apt-get; root or sudo): systemd (for
# systemd-analyze), python3-yaml, openssl. caddy and nginx are downloaded with `apt-get download`
# and unpacked under $MSGD_DEPLOY_CHECK_TOOLS (default /tmp/msgd-deploy-check-tools) unless on PATH,
# so no web server is installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
TOOLS="${MSGD_DEPLOY_CHECK_TOOLS:-/tmp/msgd-deploy-check-tools}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

FAILED=0
log() { echo "deploy-check: $*" >&2; }
ok() { echo "ok    $*"; }
fail() {
  echo "FAIL  $*"
  FAILED=1
}

APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 1 ] && return
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  APT_UPDATED=1
}
apt_install() {
  log "installing $*"
  apt_update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A binary from a Debian package, unpacked (not installed: no maintainer scripts, no service
# started). Prints its path; one on PATH wins.
deb_tool() { # command, package, path inside the package
  local name="$1" pkg="$2" rel="$3" dir
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    return
  fi
  dir="$TOOLS/$pkg"
  if [ ! -x "$dir/$rel" ]; then
    log "fetching Debian package $pkg into $dir (unpacked, not installed)"
    rm -rf "$dir" "$TMP/deb"
    mkdir -p "$dir" "$TMP/deb"
    if ! (cd "$TMP/deb" && apt-get download "$pkg" >/dev/null 2>&1); then
      apt_update >&2
      (cd "$TMP/deb" && apt-get download "$pkg" >&2) || { log "cannot download $pkg"; return 1; }
    fi
    dpkg-deb -x "$TMP"/deb/"${pkg}"_*.deb "$dir" || { log "cannot unpack $pkg"; return 1; }
    [ -x "$dir/$rel" ] || { log "$pkg has no $rel"; return 1; }
  fi
  echo "$dir/$rel"
}

# ---- tools ----------------------------------------------------------------------------------
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
command -v openssl >/dev/null 2>&1 || apt_install openssl
PY=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml, tomllib' 2>/dev/null; then
    PY="$candidate"
    break
  fi
done
if [ -z "$PY" ]; then
  apt_install python3 python3-yaml
  PY=/usr/bin/python3
fi
CADDY="$(deb_tool caddy caddy usr/bin/caddy)" || { log "no caddy: cannot check deploy/Caddyfile"; exit 1; }
NGINX="$(deb_tool nginx nginx usr/sbin/nginx)" || { log "no nginx: cannot check deploy/nginx-msgd.conf"; exit 1; }

shopt -s nullglob
UNITS=(deploy/*.service deploy/*.timer)
SERVICES=(deploy/*.service)
shopt -u nullglob
[ "${#SERVICES[@]}" -gt 0 ] || fail "no deploy/*.service"

# ---- 1. systemd-analyze ---------------------------------------------------------------------
# verify refuses ExecStart= binaries that do not exist: a temp copy of the units points at a real
# executable instead of /usr/local/bin/msgd. Every other path (flock, kill) is used as written.
mkdir -p "$TMP/units" "$TMP/bin"
cp /bin/true "$TMP/bin/msgd"
for unit in "${UNITS[@]}"; do
  sed "s#/usr/local/bin/msgd#$TMP/bin/msgd#g" "$unit" >"$TMP/units/$(basename "$unit")"
done
for unit in "${UNITS[@]}"; do
  name="$(basename "$unit")"
  # From the copies' directory: a timer's Unit= is looked up beside it.
  if out="$(cd "$TMP/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify "./$name" 2>&1)" && [ -z "$out" ]; then
    ok "systemd-analyze verify $unit"
  else
    fail "systemd-analyze verify $unit:"
    printf '%s\n' "$out" | sed "s#$TMP/units/#deploy/#g; s#$TMP/bin/msgd#/usr/local/bin/msgd#g; s/^/      /"
  fi
done
for unit in "${SERVICES[@]}"; do
  name="$(basename "$unit")"
  threshold=35
  [ "$name" = msgd.service ] && threshold=20
  if out="$(cd "$TMP/units" && systemd-analyze security --offline=true --threshold="$threshold" "./$name" 2>&1)"; then
    ok "systemd-analyze security $unit: $(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p') (<= $((threshold / 10)).$((threshold % 10)))"
  else
    fail "systemd-analyze security $unit: exposure above $((threshold / 10)).$((threshold % 10)):"
    printf '%s\n' "$out" | grep -E '✗|Overall' | sed 's/^/      /'
  fi
done

# ---- 2-5. the files' content (python) -------------------------------------------------------
if ! "$PY" - <<'PYEOF'; then FAILED=1; fi
import fnmatch, json, os, re, sys, tomllib
import yaml

failed = False
def ok(msg): print(f"ok    {msg}")
def fail(msg, details=()):
    global failed
    failed = True
    print(f"FAIL  {msg}")
    for d in details:
        print(f"      {d}")
def check(cond, msg, details=()):
    (ok(msg) if cond else fail(msg, details))
    return cond

# ---- msgd's config keys, from src/config.rs ----
src = open("src/config.rs").read()
structs = {}
for m in re.finditer(r"^(?:pub )?struct (\w+) \{\n(.*?)^\}", src, re.M | re.S):
    fields = {}
    for f in re.finditer(r"^    (?:pub(?:\([^)]*\))? )?(\w+): ([^\n]+?),\s*(?://.*)?$", m.group(2), re.M):
        fields[f.group(1)] = f.group(2).strip()
    structs[m.group(1)] = fields
LEAVES, WILDCARDS = set(), set()
def walk(struct, prefix, depth=0):
    for name, ty in structs[struct].items():
        key = f"{prefix}{name}"
        inner = ty
        while True:
            w = re.fullmatch(r"(?:Option|Box)<(.+)>", inner)
            if not w:
                break
            inner = w.group(1)
        if inner.startswith(("BTreeMap<", "HashMap<")):
            WILDCARDS.add(key)
        elif inner in structs and structs[inner] and depth < 6:
            walk(inner, key + ".", depth + 1)
        else:
            LEAVES.add(key)
if "ConfigFile" in structs:
    walk("ConfigFile", "")
check({"data_dir", "http.listen", "postgres.url", "s3.secret_access_key", "ws.idle_timeout",
       "auth.keycloak.issuer", "observability.logging.level"} <= LEAVES and len(LEAVES) > 60,
      f"config keys read from src/config.rs ({len(LEAVES)} keys, {len(WILDCARDS)} maps)")

def env_key(name):
    return ".".join(p.lower() for p in name[len("MSGD_"):].split("__"))
def is_msgd_var(name):
    if name == "MSGD_CONFIG":
        return True
    key = env_key(name)
    return key in LEAVES or any(key.startswith(w + ".") and key.count(".") == w.count(".") + 1 for w in WILDCARDS)
def check_vars(names, where):
    names = sorted(set(n for n in names if n.startswith("MSGD_")))
    bad = [n for n in names if not is_msgd_var(n)]
    check(names and not bad, f"{where}: {len(names)} MSGD_* names, all msgd config keys",
          [f"{n}: no config key {env_key(n)} in src/config.rs" for n in bad] or ["no MSGD_* names"])

def toml_duration(text):
    m = re.fullmatch(r"(\d+)\s*(ms|s|m|h|d)", str(text).strip())
    if not m:
        raise ValueError(f"not a duration: {text}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
def default_secs(field):
    m = re.search(rf"{field}: Duration::from_secs\((\d+)\)", src)
    return int(m.group(1)) if m else None

vps = tomllib.load(open("load/vps.toml", "rb"))
def vps_keys(table, prefix=""):
    for k, v in table.items():
        if isinstance(v, dict):
            yield from vps_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"
bad = [k for k in vps_keys(vps) if k not in LEAVES]
check(not bad, "load/vps.toml: every key is an msgd config key", bad)
listen = vps.get("http", {}).get("listen", "127.0.0.1:8080")
max_conn = int(vps.get("http", {}).get("max_connections", 10000))
shutdown = toml_duration(vps["http"]["shutdown_timeout"]) if "shutdown_timeout" in vps.get("http", {}) else default_secs("shutdown_timeout")
idle_timeout = toml_duration(vps.get("ws", {}).get("idle_timeout", "60s"))
heartbeat = toml_duration(vps.get("ws", {}).get("heartbeat_interval", "25s"))

router = open("src/http/mod.rs").read()
ROUTES = set(re.findall(r'\.route\("([^"]+)"', router))
check({"/v1/ws", "/healthz", "/readyz"} <= ROUTES, "src/http/mod.rs serves /v1/ws, /healthz and /readyz (the proxies' and health checks' paths)")

# ---- systemd units' content ----
def parse_unit(path):
    sections, cur, pending = {}, None, ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            cur = s.strip("[]")
            sections.setdefault(cur, [])
            continue
        k, _, v = s.partition("=")
        sections.setdefault(cur, []).append((k.strip(), v.strip()))
    return sections
def values(unit, section, key):
    return [v for k, v in unit.get(section, []) if k == key]
def seconds(text):
    total = 0
    for n, u in re.findall(r"(\d+)\s*(min|ms|s|h|m)?", text):
        total += int(n) * {"": 1, "s": 1, "ms": 0.001, "min": 60, "m": 60, "h": 3600}[u]
    return total

units = sorted(f for f in os.listdir("deploy") if f.endswith((".service", ".timer")))
services = [f for f in units if f.endswith(".service")]
unit_vars = []
for name in services:
    u = parse_unit(f"deploy/{name}")
    svc = lambda key: values(u, "Service", key)
    problems = []
    if svc("User") != ["msgd"] or svc("Group") != ["msgd"]:
        problems.append("User=msgd and Group=msgd (the dedicated user)")
    if svc("NoNewPrivileges") != ["yes"]:
        problems.append("NoNewPrivileges=yes")
    if svc("ProtectSystem") != ["strict"]:
        problems.append("ProtectSystem=strict")
    if "/var/lib/msgd" not in " ".join(svc("ReadWritePaths")).split():
        problems.append("ReadWritePaths= with /var/lib/msgd")
    if not any("/usr/local/bin/msgd " in v + " " for v in svc("ExecStart")):
        problems.append("ExecStart= running /usr/local/bin/msgd")
    if "MSGD_CONFIG=/etc/msgd/msgd.toml" not in svc("Environment"):
        problems.append("Environment=MSGD_CONFIG=/etc/msgd/msgd.toml")
    if not any(v.lstrip("-") == "/etc/msgd/msgd.env" for v in svc("EnvironmentFile")):
        problems.append("EnvironmentFile=/etc/msgd/msgd.env")
    for v in svc("Environment"):
        unit_vars += [kv.split("=", 1)[0] for kv in v.split()]
    if name == "msgd.service":
        nofile = svc("LimitNOFILE")
        if not nofile or int(nofile[-1].split(":")[-1]) < max_conn + 64:
            problems.append(f"LimitNOFILE >= http.max_connections + 64 = {max_conn + 64} (load/vps.toml)")
        stop = svc("TimeoutStopSec")
        if not stop or seconds(stop[-1]) <= shutdown:
            problems.append(f"TimeoutStopSec above http.shutdown_timeout ({shutdown}s)")
        if svc("KillSignal") not in ([], ["SIGTERM"]):
            problems.append("KillSignal=SIGTERM (serve drains on SIGTERM)")
        if svc("Restart") != ["on-failure"]:
            problems.append("Restart=on-failure")
        if svc("ExecStart") != ["/usr/local/bin/msgd serve"]:
            problems.append("ExecStart=/usr/local/bin/msgd serve")
        if svc("EnvironmentFile") != ["/etc/msgd/msgd.env"]:
            problems.append("EnvironmentFile=/etc/msgd/msgd.env, required (not -optional)")
        if values(u, "Install", "WantedBy") != ["multi-user.target"]:
            problems.append("WantedBy=multi-user.target")
    check(not problems, f"deploy/{name}: user, hardening, env file" + (", limits, stop" if name == "msgd.service" else ""),
          [f"missing or wrong: {p}" for p in problems])
for name in units:
    if name.endswith(".timer"):
        u = parse_unit(f"deploy/{name}")
        target = (values(u, "Timer", "Unit") or [name[:-len(".timer")] + ".service"])[-1]
        check(target in services and values(u, "Install", "WantedBy") == ["timers.target"],
              f"deploy/{name}: starts deploy/{target}, WantedBy=timers.target")
check_vars(unit_vars, "deploy/*.service Environment=")

# ---- the environment file template ----
env_lines = open("deploy/msgd.env.example").read().splitlines()
active = {}
mentioned = []
for line in env_lines:
    m = re.match(r"^(#\s*)?(MSGD_[A-Z0-9_]+)=(.*)$", line)
    if m:
        mentioned.append(m.group(2))
        if not m.group(1):
            active[m.group(2)] = m.group(3)
    elif line.strip() and not line.startswith("#"):
        fail(f"deploy/msgd.env.example: not a KEY=value line: {line}")
check_vars(mentioned, "deploy/msgd.env.example (set and commented)")
secrets = {k: v for k, v in active.items() if re.search(r"SECRET|PASSWORD|TOKEN|SIGNING_KEY", k)}
leaks = [k for k, v in secrets.items() if v != "CHANGE_ME"]
leaks += [k for k, v in active.items() if k.endswith("__URL") and re.search(r"://[^/@]*:([^@/]+)@", v) and re.search(r"://[^/@]*:([^@/]+)@", v).group(1) != "CHANGE_ME"]
check({"MSGD_POSTGRES__URL", "MSGD_S3__SECRET_ACCESS_KEY"} <= set(active) and not leaks,
      "deploy/msgd.env.example: sets the secrets load/vps.toml leaves out, as CHANGE_ME placeholders",
      [f"{k}: a value that is not CHANGE_ME" for k in leaks] or ["MSGD_POSTGRES__URL and MSGD_S3__SECRET_ACCESS_KEY must be set"])

# ---- compose.yaml ----
compose_text = open("deploy/compose.yaml").read()
try:
    compose = yaml.safe_load(compose_text)
    ok("deploy/compose.yaml parses as YAML")
except yaml.YAMLError as e:
    fail("deploy/compose.yaml parses as YAML", [str(e)])
    compose = None
if isinstance(compose, dict):
    top_bad = [k for k in compose if k not in ("name", "services", "volumes", "networks", "configs", "secrets") and not k.startswith("x-")]
    check(not top_bad, "deploy/compose.yaml: only Compose Specification top-level keys", top_bad)
    svcs = compose.get("services") or {}
    need = {"msgd", "postgres", "redis", "minio"}
    check(need <= set(svcs) and set(svcs) <= need | {"minio-setup", "caddy"},
          f"compose services: {', '.join(sorted(svcs))}", [f"expected msgd, postgres, redis, minio (+ minio-setup, caddy)"])
    declared_volumes = set((compose.get("volumes") or {}).keys())
    problems = []
    for name, s in svcs.items():
        if not isinstance(s, dict):
            problems.append(f"{name}: not a mapping")
            continue
        image = s.get("image", "")
        if "build" in s:
            b = s["build"]
            ctx = os.path.normpath(os.path.join("deploy", b.get("context", ".")))
            df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(df):
                problems.append(f"{name}: build dockerfile {df} does not exist")
        elif not re.search(r":[\w][\w.-]*$", image) or image.endswith(":latest"):
            problems.append(f"{name}: image {image!r} not pinned to a tag")
        long_running = s.get("restart", "no") != "no"
        hc = s.get("healthcheck")
        if long_running:
            if not isinstance(hc, dict) or not isinstance(hc.get("test"), list) or hc["test"][0] not in ("CMD", "CMD-SHELL") or hc.get("disable"):
                problems.append(f"{name}: a long-running service without a healthcheck test [CMD|CMD-SHELL, ...]")
        for dep, spec in (s.get("depends_on") or {}).items():
            if dep not in svcs:
                problems.append(f"{name}: depends_on unknown service {dep}")
                continue
            cond = spec.get("condition", "service_started") if isinstance(spec, dict) else "service_started"
            if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: depends_on {dep}: unknown condition {cond}")
            if cond == "service_healthy" and not isinstance(svcs[dep].get("healthcheck"), dict):
                problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
            if cond == "service_completed_successfully" and svcs[dep].get("restart", "no") != "no":
                problems.append(f"{name}: waits for {dep} to complete, which restarts")
        for vol in s.get("volumes") or []:
            source = (vol.get("source") if isinstance(vol, dict) else vol.split(":")[0])
            if source.startswith((".", "/")):
                if not os.path.exists(os.path.normpath(os.path.join("deploy", source))):
                    problems.append(f"{name}: bind mount source {source} does not exist (relative to deploy/)")
            elif source not in declared_volumes:
                problems.append(f"{name}: volume {source} not declared under volumes:")
        for port in s.get("ports") or []:
            p = str(port)
            if name != "caddy" and not p.startswith("127.0.0.1:"):
                problems.append(f"{name}: port {p} published beyond the host's loopback")
    # every service's dependencies form no cycle
    def cyclic(n, seen=()):
        if n in seen:
            return True
        return any(cyclic(d, seen + (n,)) for d in ((svcs.get(n) or {}).get("depends_on") or {}))
    problems += [f"{n}: depends_on cycle" for n in svcs if cyclic(n)]
    check(not problems, "compose: pinned images, healthchecks, depends_on, mounts, volumes, loopback ports", problems)

    m = svcs.get("msgd", {})
    deps = m.get("depends_on") or {}
    want = {"postgres": "service_healthy", "redis": "service_healthy"}
    wrong = [f"{d}: {c}" for d, c in want.items() if not isinstance(deps.get(d), dict) or deps[d].get("condition") != c]
    minio_dep = deps.get("minio-setup") or deps.get("minio")
    if not isinstance(minio_dep, dict) or minio_dep.get("condition") not in ("service_completed_successfully", "service_healthy"):
        wrong.append("minio-setup (completed) or minio (healthy)")
    check(not wrong, "compose msgd waits for postgres, redis (healthy) and MinIO's setup", wrong)
    env = m.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    check_vars(env.keys(), "compose msgd environment")
    mounts = [str(v) for s in svcs.values() for v in (s.get("volumes") or [])]
    canon = ["../load/vps.toml:", "../load/vps-postgresql.conf:", "../load/vps-redis.conf:"]
    check(all(any(v.startswith(c) for v in mounts) for c in canon),
          "compose mounts load/vps.toml, load/vps-postgresql.conf and load/vps-redis.conf (the canonical VPS settings)")
    listen_env = str(env.get("MSGD_HTTP__LISTEN", ""))
    port = listen_env.rsplit(":", 1)[-1]
    hc = " ".join(map(str, (m.get("healthcheck") or {}).get("test", [])))
    check(listen_env.startswith("0.0.0.0:") and f"127.0.0.1:{port}:{port}" in map(str, m.get("ports") or [])
          and f"/dev/tcp/127.0.0.1/{port}" in hc and re.search(r"GET (/healthz|/readyz) ", hc),
          f"compose msgd listens on {listen_env or '?'}, published on 127.0.0.1:{port}, health-checked on it")
    grace = str(m.get("stop_grace_period", "10s"))
    check(toml_duration(grace) > shutdown, f"compose msgd stop_grace_period {grace} > http.shutdown_timeout {shutdown}s")
    # ${VAR}, ${VAR:-default}, ${VAR:?error}: a variable without a default must be in the env template
    compose_env = open("deploy/compose.env.example").read()
    defined = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", compose_env, re.M))
    used = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}", compose_text)
    missing = sorted({v for v, mod in used if not mod.lstrip(":").startswith("-") and v not in defined})
    unused = sorted(defined - {v for v, _ in used})
    check(not missing and not unused, "compose variables match deploy/compose.env.example",
          [f"{v}: used without a default, not in compose.env.example" for v in missing] +
          [f"{v}: in compose.env.example, unused by compose.yaml" for v in unused])
    placeholders = [l for l in compose_env.splitlines() if re.match(r"^[A-Z_]*(PASSWORD|SECRET)[A-Z_]*=", l) and not l.endswith("=CHANGE_ME")]
    check(not placeholders, "deploy/compose.env.example: secrets are CHANGE_ME placeholders", placeholders)

# ---- Dockerfile ----
def dockerfile(path):
    out, pending = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not pending and re.match(r"^\s*#", line):
            continue
        if pending and re.match(r"^\s*#", line):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out
instrs = dockerfile("deploy/Dockerfile")
args = {}
stages = []  # [name, image, [(instr, rest)]]
for word, rest in instrs:
    if word == "ARG" and not stages:
        k, _, v = rest.partition("=")
        args[k] = v
    elif word == "FROM":
        m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
        image = re.sub(r"\$\{(\w+)\}", lambda a: args.get(a.group(1), a.group(0)), m.group(1))
        stages.append([m.group(2), image, []])
    elif stages:
        stages[-1][2].append((word, rest))
problems = []
if len(stages) < 2:
    problems.append("fewer than two stages (build, runtime)")
else:
    build, final = stages[0], stages[-1]
    def unresolved(img):
        return "${" in img or "$" in img
    for name, image, _ in stages:
        if unresolved(image) or ":" not in image or image.endswith(":latest"):
            problems.append(f"stage {name}: image {image} unresolved or unpinned")
    if not build[0] or not build[1].startswith("rust:"):
        problems.append(f"first stage: a named stage from a rust image (is {build[1]} AS {build[0]})")
    runs = " ".join(r for w, r in build[2] if w == "RUN")
    if not re.search(r"cargo build (?:[^&;|]*\s)?--release(?:\s[^&;|]*)?\s--locked\b|cargo build --release --locked", runs):
        problems.append("build stage: RUN cargo build --release --locked")
    # what the build stage copies from the context
    copied = []
    for w, r in build[2]:
        if w == "COPY" and "--from" not in r:
            parts = [p for p in r.split() if not p.startswith("--")]
            copied += parts[:-1]
    for c in copied:
        if not os.path.exists(c):
            problems.append(f"COPY {c}: no such path in the repository")
    def covered(path):
        return any(path == c.rstrip("/") or path.startswith(c.rstrip("/") + "/") for c in copied)
    manifest = tomllib.load(open("Cargo.toml", "rb"))
    needed = ["Cargo.toml", "Cargo.lock", manifest.get("lib", {}).get("path", "src/lib.rs")]
    needed += [b.get("path", f"src/bin/{b['name']}.rs") for b in manifest.get("bin", [])]
    needed += [b.get("path", f"benches/{b['name']}.rs") for b in manifest.get("bench", [])]
    needed += [t.get("path", f"tests/{t['name']}.rs") for t in manifest.get("test", [])]
    needed += [t.get("path", f"examples/{t['name']}.rs") for t in manifest.get("example", [])]
    for root in ("src", "cli"):
        for d, _, files in os.walk(root):
            for f in files:
                if f.endswith(".rs"):
                    text = open(os.path.join(d, f)).read()
                    needed += re.findall(r'sqlx::migrate!\("([^"]+)"\)', text)
                    needed += [os.path.normpath(os.path.join(d, p)) for p in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', text)]
    for n in needed:
        if not covered(n):
            problems.append(f"the build needs {n}, which the build stage does not COPY")
    # the Dockerfile-specific ignore file must let every copied path through
    ignore = [l.strip() for l in open("deploy/Dockerfile.dockerignore") if l.strip() and not l.startswith("#")]
    def ignored(path):
        result = False
        for pat in ignore:
            neg = pat.startswith("!")
            p = pat[1:] if neg else pat
            p = p.rstrip("/")
            parts = path.split("/")
            if any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
                result = not neg
        return result
    for c in copied:
        if ignored(c.rstrip("/")):
            problems.append(f"COPY {c}: excluded by deploy/Dockerfile.dockerignore")
    # the runtime stage
    if not re.match(r"(debian:[\w.-]*-slim|gcr\.io/distroless/)", final[1]):
        problems.append(f"final stage: debian:*-slim or distroless (is {final[1]})")
    users = [r for w, r in final[2] if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("final stage: USER, not root")
    if not any(w == "COPY" and f"--from={build[0]}" in r and r.split()[-1] == "/usr/local/bin/msgd" for w, r in final[2]):
        problems.append(f"final stage: COPY --from={build[0]} ... /usr/local/bin/msgd")
    env_words = " ".join(r for w, r in final[2] if w == "ENV")
    env_pairs = dict(re.findall(r"(\w+)=(\S+)", env_words))
    check_vars(env_pairs.keys(), "deploy/Dockerfile ENV")
    dlisten = env_pairs.get("MSGD_HTTP__LISTEN", "")
    expose = [r.split("/")[0] for w, r in final[2] if w == "EXPOSE"]
    if not dlisten.startswith("0.0.0.0:") or dlisten.rsplit(":", 1)[-1] not in expose:
        problems.append("final stage: ENV MSGD_HTTP__LISTEN=0.0.0.0:PORT and EXPOSE PORT")
    hc = " ".join(r for w, r in final[2] if w == "HEALTHCHECK")
    route = re.search(r"GET (/\w+) ", hc)
    if not route or route.group(1) not in ("/healthz", "/readyz") or route.group(1) not in ROUTES \
            or f"/dev/tcp/127.0.0.1/{dlisten.rsplit(':', 1)[-1]}" not in hc:
        problems.append("final stage: HEALTHCHECK GET /healthz or /readyz on the listen port")
    entry = " ".join(r for w, r in final[2] if w in ("ENTRYPOINT", "CMD"))
    if "/usr/local/bin/msgd" not in entry or '"serve"' not in entry:
        problems.append('final stage: ENTRYPOINT ["/usr/local/bin/msgd"], CMD ["serve"]')
    if any(w == "ADD" for _, _, body in stages for w, _ in body):
        problems.append("ADD: use COPY")
check(not problems, "deploy/Dockerfile: stages, cargo build --release --locked, the build's inputs, non-root USER, EXPOSE, HEALTHCHECK", problems)

# ---- MinIO policy ----
try:
    policy = json.load(open("deploy/minio-msgd-policy.json"))
    res = {r for st in policy["Statement"] for r in st["Resource"]}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    check(res == {"arn:aws:s3:::msgd", "arn:aws:s3:::msgd/*"} and
          {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"} <= actions
          and not any("*" in a for a in actions),
          "deploy/minio-msgd-policy.json: bucket msgd only; list, get, put, delete, multipart")
except (ValueError, KeyError, TypeError) as e:
    fail("deploy/minio-msgd-policy.json is a policy document", [repr(e)])

# ---- the proxies against msgd's settings ----
nginx = open("deploy/nginx-msgd.conf").read()
ws = re.search(r"location = /v1/ws \{(.*?)\n    \}", nginx, re.S)
body = ws.group(1) if ws else ""
timeouts = [toml_duration(t) for t in re.findall(r"proxy_(?:read|send)_timeout (\d+s);", body)]
check(ws and "proxy_set_header Upgrade $http_upgrade;" in body and "proxy_set_header Connection $msgd_connection;" in body
      and len(timeouts) == 2 and min(timeouts) > max(idle_timeout, heartbeat)
      and re.search(rf"server {re.escape(listen)};", nginx),
      f"deploy/nginx-msgd.conf: /v1/ws upgraded, timeouts > ws.idle_timeout ({idle_timeout:g}s), upstream {listen}")
hidden = [re.search(rf"location {where} \{{\s*return 404;\s*\}}", nginx) for where in (r"= /metrics", r"\^~ /v1/admin")]
check(all(hidden), "deploy/nginx-msgd.conf: /metrics and /v1/admin answer 404 from outside")

sys.exit(1 if failed else 0)
PYEOF

# ---- 6. Caddyfile ---------------------------------------------------------------------------
# caddy writes its storage under $HOME; keep it in the temp dir.
if out="$(HOME="$TMP/caddy-home" XDG_DATA_HOME="$TMP/caddy-home" XDG_CONFIG_HOME="$TMP/caddy-home" \
  "$CADDY" validate --adapter caddyfile --config deploy/Caddyfile 2>&1)" && ! grep -q '"level":"\(warn\|error\)"' <<<"$out"; then
  ok "caddy validate deploy/Caddyfile ($("$CADDY" version | cut -d' ' -f1))"
else
  fail "caddy validate deploy/Caddyfile:"
  grep -v '"level":"info"' <<<"$out" | sed 's/^/      /'
fi
if "$CADDY" fmt deploy/Caddyfile 2>/dev/null | diff -u deploy/Caddyfile - >"$TMP/caddy-fmt.diff"; then
  ok "caddy fmt deploy/Caddyfile: formatted"
else
  fail "caddy fmt deploy/Caddyfile: not formatted (caddy fmt --overwrite deploy/Caddyfile):"
  sed 's/^/      /' "$TMP/caddy-fmt.diff" | head -20
fi
if HOME="$TMP/caddy-home" "$CADDY" adapt --adapter caddyfile --config deploy/Caddyfile >"$TMP/caddy.json" 2>/dev/null &&
  "$PY" - "$TMP/caddy.json" <<'PYEOF'; then
import json, re, sys, tomllib
cfg = json.load(open(sys.argv[1]))
listen = tomllib.load(open("load/vps.toml", "rb")).get("http", {}).get("listen", "127.0.0.1:8080")
text = json.dumps(cfg)
dials = re.findall(r'"dial": "([^"]+)"', text)
paths = [json.loads("[" + m + "]") for m in re.findall(r'"path": \[([^\]]*)\]', text)]
hidden = any({"/metrics", "/v1/admin", "/v1/admin/*"} <= set(p) for p in paths) and '"static_response"' in text
sys.exit(0 if listen in dials and hidden else 1)
PYEOF
  ok "deploy/Caddyfile proxies to load/vps.toml's http.listen and hides /metrics and /v1/admin"
else
  fail "deploy/Caddyfile: no reverse_proxy to load/vps.toml's http.listen, or /metrics or /v1/admin not hidden"
fi

# ---- 7. nginx -------------------------------------------------------------------------------
mkdir -p "$TMP/nginx/logs"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=chat.example.com \
  -keyout "$TMP/nginx/key.pem" -out "$TMP/nginx/cert.pem" >/dev/null 2>&1
sed -e "s#/etc/letsencrypt/live/[^/]*/fullchain.pem#$TMP/nginx/cert.pem#" \
  -e "s#/etc/letsencrypt/live/[^/]*/privkey.pem#$TMP/nginx/key.pem#" \
  -e "s#/var/log/nginx/#$TMP/nginx/logs/#" deploy/nginx-msgd.conf >"$TMP/nginx/site.conf"
cat >"$TMP/nginx/nginx.conf" <<EOF
pid $TMP/nginx/nginx.pid;
error_log stderr;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    include $TMP/nginx/site.conf;
}
EOF
# -q: only warnings and errors are printed, and any is a failure.
if out="$("$NGINX" -t -q -p "$TMP/nginx" -e stderr -c "$TMP/nginx/nginx.conf" 2>&1)" && [ -z "$out" ]; then
  ok "nginx -t deploy/nginx-msgd.conf ($("$NGINX" -v 2>&1 | sed 's/.*version: //'))"
else
  fail "nginx -t deploy/nginx-msgd.conf:"
  printf '%s\n' "$out" | sed "s#$TMP/nginx/site.conf#deploy/nginx-msgd.conf#; s/^/      /"
fi

# ---- 8. minio-setup.sh against a stub mc ----------------------------------------------------
mkdir -p "$TMP/mc/bin"
cat >"$TMP/mc/bin/mc" <<'EOF'
#!/bin/sh
# Records each call (without mc's global flags); `admin policy create` also keeps the policy.
while [ "$#" -gt 0 ]; do
  case "$1" in --config-dir) shift 2 ;; --quiet) shift ;; *) break ;; esac
done
echo "$*" >>"$MC_LOG"
case "$*" in
  "admin policy create "*) cp "$6" "$MC_LOG.policy" ;;
  "admin policy attach "*) [ -n "${MC_ATTACH_ERROR:-}" ] && { echo "$MC_ATTACH_ERROR" >&2; exit 1; } ;;
esac
exit 0
EOF
chmod +x "$TMP/mc/bin/mc"
setup() { # extra env..., runs deploy/minio-setup.sh with the stub
  local rc=0
  env PATH="$TMP/mc/bin:$PATH" MC_LOG="$TMP/mc/log" MINIO_ROOT_USER=root MINIO_ROOT_PASSWORD=rootpass \
    S3_SECRET=msgdsecret "$@" sh deploy/minio-setup.sh >"$TMP/mc/out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || echo "exit status $rc" >>"$TMP/mc/out"
  return "$rc"
}
problems=()
sh -n deploy/minio-setup.sh || problems+=("sh -n: syntax error")
rm -f "$TMP/mc/log"*
if setup; then
  for want in "alias set setup http://127.0.0.1:9000 root rootpass" "mb --ignore-existing setup/msgd" \
    "admin policy create setup msgd-msgd " "admin user add setup msgd msgdsecret" \
    "admin policy attach setup msgd-msgd --user msgd"; do
    grep -qF -- "$want" "$TMP/mc/log" || problems+=("first run: no \`mc $want\`")
  done
  "$PY" -c 'import json,sys; p=json.load(open(sys.argv[1])); assert "arn:aws:s3:::msgd/*" in json.dumps(p)' \
    "$TMP/mc/log.policy" 2>/dev/null || problems+=("first run: the policy given to mc is not JSON naming bucket msgd")
else
  problems+=("first run failed: $(tail -1 "$TMP/mc/out")")
fi
rm -f "$TMP/mc/log"*
setup MC_ATTACH_ERROR="mc: <ERROR> The specified policy change is already in effect." ||
  problems+=("a rerun (policy already attached) failed: $(tail -1 "$TMP/mc/out")")
rm -f "$TMP/mc/log"*
if setup S3_BUCKET=chat-files; then
  "$PY" -c 'import json,sys; t=json.dumps(json.load(open(sys.argv[1]))); assert "arn:aws:s3:::chat-files/*" in t and ":::msgd" not in t' \
    "$TMP/mc/log.policy" 2>/dev/null || problems+=("S3_BUCKET=chat-files: the policy does not name that bucket alone")
else
  problems+=("S3_BUCKET=chat-files: failed: $(tail -1 "$TMP/mc/out")")
fi
setup MC_ATTACH_ERROR="mc: <ERROR> Unable to attach policy: access denied" &&
  problems+=("an mc error (attach refused) did not fail the script")
if [ "${#problems[@]}" -eq 0 ]; then
  ok "deploy/minio-setup.sh: bucket, policy, user, attach; idempotent; fails on mc errors (stub mc)"
else
  fail "deploy/minio-setup.sh:"
  printf '      %s\n' "${problems[@]}"
fi

# ---- 9. msgd config --check with a built binary ----------------------------------------------
BIN="${MSGD_BIN:-}"
if [ -z "$BIN" ]; then
  for candidate in target/release/msgd target/debug/msgd; do
    [ -x "$candidate" ] && { BIN="$candidate"; break; }
  done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  log "SKIPPED msgd config --check: no msgd binary (MSGD_BIN, target/release/msgd, target/debug/msgd)"
else
  # The env template's active lines, then compose's msgd environment with placeholders for ${...}.
  mapfile -t template < <(grep -E '^MSGD_[A-Z0-9_]+=' deploy/msgd.env.example)
  if out="$(env -i PATH="$PATH" MSGD_CONFIG=load/vps.toml "${template[@]}" "$BIN" config --check 2>&1)" &&
    grep -q "services mode" <<<"$out"; then
    ok "$BIN config --check: load/vps.toml + deploy/msgd.env.example ($out)"
  else
    fail "$BIN config --check: load/vps.toml + deploy/msgd.env.example:"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
  mapfile -t composed < <("$PY" - <<'PYEOF'
import re, yaml
env = yaml.safe_load(open("deploy/compose.yaml"))["services"]["msgd"]["environment"]
for k, v in env.items():
    if k == "MSGD_CONFIG":
        v = "load/vps.toml"   # the file compose mounts there
    v = re.sub(r"\$\{[A-Za-z_]\w*:-([^}]*)\}", r"\1", str(v))
    v = re.sub(r"\$\{[A-Za-z_]\w*(?::?\?[^}]*)?\}", "placeholder", v)
    print(f"{k}={v}")
PYEOF
  )
  if out="$(env -i PATH="$PATH" "${composed[@]}" "$BIN" config --check 2>&1)" && grep -q "services mode" <<<"$out"; then
    ok "$BIN config --check: compose.yaml's msgd environment ($out)"
  else
    fail "$BIN config --check: compose.yaml's msgd environment:"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
fi

if [ "$FAILED" -ne 0 ]; then
  echo "deploy-check: FAILED (see the FAIL lines above)"
  exit 1
fi
echo "deploy-check: all deployment files check out"
