#!/usr/bin/env bash
# Test MariaDB for kss: one private mariadbd on 127.0.0.1, its own data dir,
# a throwaway CA for TLS, databases `kss` and `kss_other`, users `kss` and
# `kss_tls`. For tests only: passwords are fixed, root has no password.
#
#   scripts/mariadb.sh up|down|env|status|restart|stop-db|start-db|kill-db|freeze-db|thaw-db
#
# `up` and `env` print shell exports on stdout (progress goes to stderr), so
#   eval "$(scripts/mariadb.sh up)"
# works. See scripts/README.md.
set -euo pipefail

STATE_DIR="${KSS_MARIADB_STATE:-/tmp/kss-mariadb}"
DATA_DIR="$STATE_DIR/data"
TLS_DIR="$STATE_DIR/tls"
SOCKET="$STATE_DIR/sock"
PID_FILE="$STATE_DIR/mariadbd.pid"
LOG_FILE="$STATE_DIR/mariadbd.log"
CONF_FILE="$STATE_DIR/kss-mariadb.conf"   # port and password chosen at `up`
MARKER="$STATE_DIR/.kss-mariadb-state"    # `down` deletes only dirs carrying it
READY="$STATE_DIR/.ready"                 # written when `up` finished

START_TIMEOUT="${KSS_MARIADB_START_TIMEOUT:-60}"  # seconds
STOP_TIMEOUT="${KSS_MARIADB_STOP_TIMEOUT:-60}"    # seconds

# MySQL 8's default sql_mode, so the tests see production's strictness.
SQL_MODE="${KSS_MARIADB_SQL_MODE:-ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION}"

# Set by load_config (from CONF_FILE) or by cmd_up (from the environment).
PORT=""
PASSWORD=""

log() {
    echo "mariadb.sh: $*" >&2
}

die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 up|down|env|status|restart|stop-db|start-db|kill-db|freeze-db|thaw-db" >&2
    exit 2
}

# ---------------------------------------------------------------- binaries

# mariadbd lives in /usr/sbin, which is not on every PATH.
find_bin() {
    local name="$1"
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    elif [ -x "/usr/sbin/$name" ]; then
        echo "/usr/sbin/$name"
    elif [ -x "/usr/bin/$name" ]; then
        echo "/usr/bin/$name"
    else
        return 1
    fi
}

have_all_bins() {
    find_bin mariadbd >/dev/null &&
        find_bin mariadb >/dev/null &&
        find_bin mariadb-admin >/dev/null &&
        find_bin mariadb-install-db >/dev/null &&
        find_bin openssl >/dev/null
}

install_packages() {
    # Ask only for what is missing: naming an installed package (openssl)
    # makes apt-get upgrade it and its libraries.
    local packages=()
    if ! find_bin mariadbd >/dev/null || ! find_bin mariadb-install-db >/dev/null; then
        packages+=(mariadb-server)
    fi
    if ! find_bin mariadb >/dev/null || ! find_bin mariadb-admin >/dev/null; then
        packages+=(mariadb-client)
    fi
    if ! find_bin openssl >/dev/null; then
        packages+=(openssl)
    fi
    if [ "${#packages[@]}" -eq 0 ]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing ${packages[*]} and apt-get is not available"
    log "installing ${packages[*]} with apt-get"
    # Without a policy-rc.d, the package's postinst may start a system
    # mariadbd on port 3306 with /var/lib/mysql. Block that while we install.
    local made_policy=0 started=$SECONDS rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || rc=$?
    if [ "$rc" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${packages[@]}" >&2 || rc=$?
    fi
    if [ "$made_policy" -eq 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
    have_all_bins || die "mariadb binaries still missing after apt-get install"
    log "packages installed in $((SECONDS - started))s"
}

# ------------------------------------------------------------- processes

# True if PID exists and is not a zombie.
pid_alive() {
    local pid="$1" state
    [ -r "/proc/$pid/stat" ] || return 1
    # Field 3 of /proc/PID/stat; the command name (field 2) may hold spaces,
    # so take what follows its closing parenthesis.
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" || return 1
    [ -n "$state" ] && [ "$state" != "Z" ]
}

# True if PID is a live mariadbd serving our data dir.
is_our_mariadbd() {
    local pid="$1" exe
    case "$pid" in
        '' | *[!0-9]*) return 1 ;;
    esac
    pid_alive "$pid" || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    exe="${exe% (deleted)}"   # binary replaced by an upgrade since start
    [ "$(basename "$exe")" = "mariadbd" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--datadir=$DATA_DIR"
}

# Prints the PID of our running mariadbd, or fails. Trusts the PID file only
# after checking /proc; otherwise looks for a mariadbd on our data dir.
server_pid() {
    local pid="" dir
    if [ -r "$PID_FILE" ]; then
        pid="$(tr -dc '0-9' <"$PID_FILE")"
        if is_our_mariadbd "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        if is_our_mariadbd "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# --------------------------------------------------------------- config

load_config() {
    if [ ! -f "$MARKER" ] || [ ! -f "$READY" ] || [ ! -r "$CONF_FILE" ]; then
        die "no test database in $STATE_DIR (run: $0 up)"
    fi
    local key value
    while IFS='=' read -r key value; do
        case "$key" in
            port) PORT="$value" ;;
            password) PASSWORD="$value" ;;
        esac
    done <"$CONF_FILE"
    if [ -z "$PORT" ] || [ -z "$PASSWORD" ]; then
        die "incomplete $CONF_FILE"
    fi
}

# Percent-encodes everything except RFC 3986 unreserved characters.
urlencode() {
    local s="$1" out="" c i
    local LC_ALL=C
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
            [A-Za-z0-9._~-]) out+="$c" ;;
            *) out+="$(printf '%%%02X' "'$c")" ;;
        esac
    done
    printf '%s' "$out"
}

# Escapes a value for a single-quoted SQL string literal.
sql_string() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\'/\\\'}"
    printf "'%s'" "$s"
}

# Quotes a value for the shell: 'value', with ' written as '\''.
shell_quote() {
    local s="$1"
    printf "'%s'" "${s//\'/\'\\\'\'}"
}

# ------------------------------------------------------------- database

root_sql() {
    "$(find_bin mariadb)" --no-defaults --protocol=socket --socket="$SOCKET" \
        --user=root --batch --skip-column-names "$@"
}

start_server() {
    local mariadbd bg_pid waited=0
    mariadbd="$(find_bin mariadbd)"
    rm -f "$PID_FILE"
    # setsid: detach from the caller's session and signals (Ctrl-C, hang-up).
    # All output goes to the log, so `$(scripts/mariadb.sh up)` does not wait
    # for the server to close the caller's pipe; fd 9 (our lock) is closed so
    # the server does not hold the lock after we exit.
    setsid "$mariadbd" --no-defaults \
        --user=root \
        --datadir="$DATA_DIR" \
        --socket="$SOCKET" \
        --port="$PORT" \
        --bind-address=127.0.0.1 \
        --pid-file="$PID_FILE" \
        --skip-name-resolve \
        --max-connections=500 \
        --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_unicode_ci \
        --sql-mode="$SQL_MODE" \
        --ssl-ca="$TLS_DIR/ca.pem" \
        --ssl-cert="$TLS_DIR/server.pem" \
        --ssl-key="$TLS_DIR/server.key" \
        >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
    bg_pid=$!
    # Wait (in tenths of a second) until it answers on its socket.
    while ! "$(find_bin mariadb-admin)" --no-defaults --protocol=socket \
        --socket="$SOCKET" --user=root --connect-timeout=2 ping >/dev/null 2>&1; do
        if ! pid_alive "$bg_pid"; then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "mariadbd exited during start-up (log: $LOG_FILE)"
        fi
        if [ "$waited" -ge $((START_TIMEOUT * 10)) ]; then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "mariadbd did not answer within ${START_TIMEOUT}s (pid $bg_pid, log: $LOG_FILE)"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    local pid
    pid="$(server_pid)" || die "mariadbd answers but its PID file $PID_FILE does not name it"
    log "mariadbd running, pid $pid, port $PORT, socket $SOCKET"
}

stop_server() {
    local pid waited=0
    if ! pid="$(server_pid)"; then
        log "mariadbd is not running"
        return 0
    fi
    log "stopping mariadbd (pid $pid)"
    kill -TERM "$pid"
    while pid_alive "$pid"; do
        if [ "$waited" -ge $((STOP_TIMEOUT * 10)) ]; then
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    log "mariadbd stopped"
}

make_certs() {
    local openssl
    openssl="$(find_bin openssl)"
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    cat >"$TLS_DIR/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no

[dn]
CN = kss test CA

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:mysql.databases.svc, DNS:mysql.databases.svc.cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
CNF
    "$openssl" genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$TLS_DIR/ca.key"
    "$openssl" req -new -x509 -config "$TLS_DIR/openssl.cnf" -extensions v3_ca \
        -key "$TLS_DIR/ca.key" -sha256 -days 3650 -out "$TLS_DIR/ca.pem"
    make_server_cert
    make_wrong_ca
}

# The server's certificate, signed by the test CA. Its names: this host's loopback, and
# mysql.databases.svc — the Service by which the e2e suite's pods reach this server
# (e2e/run-inside.sh), as they would a database outside the cluster.
make_server_cert() {
    local openssl
    openssl="$(find_bin openssl)"
    "$openssl" genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$TLS_DIR/server.key"
    "$openssl" req -new -config "$TLS_DIR/openssl.cnf" -subj "/CN=localhost" \
        -key "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr"
    "$openssl" x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" \
        -CAkey "$TLS_DIR/ca.key" -CAcreateserial -sha256 -days 3650 \
        -extfile "$TLS_DIR/openssl.cnf" -extensions v3_server \
        -out "$TLS_DIR/server.pem" 2>/dev/null
    "$openssl" verify -CAfile "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" >/dev/null ||
        die "generated server certificate does not verify"
    chmod 600 "$TLS_DIR/ca.key" "$TLS_DIR/server.key"
    chmod 644 "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem"
}

# A second CA, with the same name as the real one, that signed nothing: clients that
# trust only it must refuse the server (tests of certificate verification).
make_wrong_ca() {
    local openssl
    openssl="$(find_bin openssl)"
    "$openssl" genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$TLS_DIR/wrong-ca.key"
    "$openssl" req -new -x509 -config "$TLS_DIR/openssl.cnf" -extensions v3_ca \
        -key "$TLS_DIR/wrong-ca.key" -sha256 -days 3650 -out "$TLS_DIR/wrong-ca.pem"
    if "$openssl" verify -CAfile "$TLS_DIR/wrong-ca.pem" "$TLS_DIR/server.pem" >/dev/null 2>&1; then
        die "the wrong CA verifies the server certificate"
    fi
    chmod 600 "$TLS_DIR/wrong-ca.key"
    chmod 644 "$TLS_DIR/wrong-ca.pem"
}

# Creates databases and users. Runs as root over the socket.
setup_sql() {
    local host pw
    # Anonymous users (''@'localhost', ''@'<hostname>') shadow 'kss'@'%'
    # ("Access denied") and let any user name in. mariadb-install-db makes
    # them with the test database, which --skip-test-db leaves out; drop any
    # that exist all the same.
    while IFS= read -r host; do
        log "dropping anonymous user ''@'$host'"
        root_sql -e "DROP USER ''@$(sql_string "$host");"
    done < <(root_sql -e "SELECT Host FROM mysql.user WHERE User = '';")

    # Root keeps only root@localhost (the socket, inside a 0700 dir); the
    # password-less root@127.0.0.1, root@::1 and root@<hostname> go.
    while IFS= read -r host; do
        root_sql -e "DROP USER 'root'@$(sql_string "$host");"
    done < <(root_sql -e "SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost';")

    pw="$(sql_string "$PASSWORD")"
    root_sql <<SQL
CREATE DATABASE kss CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE kss_other CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE USER 'kss'@'%' IDENTIFIED BY $pw;
CREATE USER 'kss'@'localhost' IDENTIFIED BY $pw;
CREATE USER 'kss_tls'@'%' IDENTIFIED BY $pw REQUIRE SSL;

-- kss.* and kss_other.* by name; \`kss\_%\`.* lets tests create their own
-- scratch databases named kss_<something>.
GRANT ALL PRIVILEGES ON \`kss\`.* TO 'kss'@'%', 'kss'@'localhost', 'kss_tls'@'%';
GRANT ALL PRIVILEGES ON \`kss_other\`.* TO 'kss'@'%', 'kss'@'localhost', 'kss_tls'@'%';
GRANT ALL PRIVILEGES ON \`kss\\_%\`.* TO 'kss'@'%', 'kss'@'localhost', 'kss_tls'@'%';
FLUSH PRIVILEGES;
SQL
    local anon
    anon="$(root_sql -e "SELECT COUNT(*) FROM mysql.user WHERE User = '';")"
    [ "$anon" = "0" ] || die "anonymous users remain after dropping them"
}

# -------------------------------------------------------------- commands

cmd_env() {
    load_config
    local pw url tls_url other_url
    pw="$(urlencode "$PASSWORD")"
    # kss verifies the server's certificate unless the address says ssl-mode=DISABLED
    # (or another mode): the plain URLs ask for plaintext, the TLS URL names only the CA
    # and so gets kss's default, VERIFY_IDENTITY (the certificate names 127.0.0.1).
    url="mysql://kss:$pw@127.0.0.1:$PORT/kss?ssl-mode=DISABLED"
    other_url="mysql://kss:$pw@127.0.0.1:$PORT/kss_other?ssl-mode=DISABLED"
    tls_url="mysql://kss_tls:$pw@127.0.0.1:$PORT/kss?ssl-ca=$(urlencode "$TLS_DIR/ca.pem")"
    echo "export KSS_TEST_MYSQL_URL=$(shell_quote "$url")"
    echo "export KSS_TEST_MYSQL_OTHER_URL=$(shell_quote "$other_url")"
    echo "export KSS_TEST_MYSQL_TLS_URL=$(shell_quote "$tls_url")"
    echo "export KSS_TEST_MYSQL_CA=$(shell_quote "$TLS_DIR/ca.pem")"
    if [ -r "$TLS_DIR/wrong-ca.pem" ]; then
        echo "export KSS_TEST_MYSQL_WRONG_CA=$(shell_quote "$TLS_DIR/wrong-ca.pem")"
    fi
    echo "export KSS_TEST_MYSQL_SOCKET=$(shell_quote "$SOCKET")"
}

# Whether port $1 lies in the kernel's ephemeral (client source) port range.
in_ephemeral_range() {
    local low high
    read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || return 1
    [ "$1" -ge "$low" ] && [ "$1" -le "$high" ]
}

cmd_up() {
    if [ -f "$MARKER" ] && [ -f "$READY" ]; then
        load_config
        if [ -z "${KSS_MARIADB_PORT:-}" ] && in_ephemeral_range "$PORT"; then
            # Left by an older version of this script (port 33306): see below.
            log "state dir $STATE_DIR uses port $PORT, inside the ephemeral port range: recreating it"
            if server_pid >/dev/null; then
                stop_server || die "could not stop mariadbd on port $PORT"
            fi
            rm -rf -- "$STATE_DIR"
        fi
    fi
    if [ -f "$MARKER" ] && [ -f "$READY" ]; then
        if [ ! -r "$TLS_DIR/wrong-ca.pem" ]; then
            log "adding the wrong CA (made by newer versions of this script) to $TLS_DIR"
            make_wrong_ca
        fi
        if ! grep -q 'DNS:mysql.databases.svc' "$TLS_DIR/openssl.cnf" 2>/dev/null; then
            log "re-issuing the server certificate with the names of newer versions of this script"
            sed -i 's/^subjectAltName = .*/subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:mysql.databases.svc, DNS:mysql.databases.svc.cluster.local/' \
                "$TLS_DIR/openssl.cnf"
            make_server_cert
            if server_pid >/dev/null; then
                # MariaDB 10.4+ reloads its certificate without a restart.
                root_sql -e 'FLUSH SSL' ||
                    die "FLUSH SSL failed: restart the server ($0 stop-db; $0 start-db)"
            fi
        fi
        if server_pid >/dev/null; then
            log "already running (state dir $STATE_DIR)"
        else
            log "state dir $STATE_DIR exists but mariadbd is stopped: starting it"
            start_server
        fi
        cmd_env
        return 0
    fi

    # Below Linux's ephemeral port range (32768-60999): while the server is stopped (the
    # outage tests), a client's reconnect to a port in that range can be given the same
    # port as its own source and connect to itself, and the port is then taken when the
    # server starts again ("Address already in use").
    PORT="${KSS_MARIADB_PORT:-23306}"
    PASSWORD="${KSS_MARIADB_PASSWORD:-kss-test-password}"
    case "$PORT" in
        '' | *[!0-9]*) die "KSS_MARIADB_PORT must be a number, got '$PORT'" ;;
    esac
    if in_ephemeral_range "$PORT"; then
        log "warning: port $PORT is inside the ephemeral port range; the database restart tests may find it taken"
    fi
    case "$PASSWORD" in
        *$'\n'*) die "KSS_MARIADB_PASSWORD must not contain a newline" ;;
    esac
    # A Unix socket path is limited to 107 bytes.
    [ "${#SOCKET}" -le 100 ] || die "socket path too long: $SOCKET (shorten KSS_MARIADB_STATE)"

    if [ -e "$STATE_DIR" ]; then
        if [ -f "$MARKER" ]; then
            # Left by an `up` that did not finish.
            if server_pid >/dev/null; then
                stop_server || die "could not stop the half-set-up mariadbd"
            fi
            log "removing unfinished state dir $STATE_DIR"
            rm -rf -- "$STATE_DIR"
        else
            die "$STATE_DIR exists and was not made by this script; remove it or set KSS_MARIADB_STATE"
        fi
    fi

    install_packages

    mkdir -p "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    : >"$MARKER"
    printf 'port=%s\npassword=%s\n' "$PORT" "$PASSWORD" >"$CONF_FILE"
    chmod 600 "$CONF_FILE"

    log "creating data dir $DATA_DIR"
    "$(find_bin mariadb-install-db)" --no-defaults --user=root --datadir="$DATA_DIR" \
        --auth-root-authentication-method=normal --skip-test-db \
        >>"$STATE_DIR/install-db.log" 2>&1 ||
        die "mariadb-install-db failed (log: $STATE_DIR/install-db.log)"

    log "creating a test CA and server certificate in $TLS_DIR"
    make_certs

    start_server
    setup_sql
    : >"$READY"
    log "ready"
    cmd_env
}

cmd_start_db() {
    load_config
    if server_pid >/dev/null; then
        log "already running"
        return 0
    fi
    start_server
}

cmd_stop_db() {
    load_config
    cmd_thaw_db
    stop_server || die "mariadbd did not stop within ${STOP_TIMEOUT}s"
}

# A crashed database: mariadbd killed with SIGKILL (no clean shutdown; `start-db` then runs
# InnoDB's crash recovery).
cmd_kill_db() {
    local pid
    load_config
    pid="$(server_pid)" || die "mariadbd is not running"
    kill -KILL "$pid"
    while pid_alive "$pid"; do
        sleep 0.05
    done
    log "mariadbd (pid $pid) killed (SIGKILL)"
}

# A hung database: mariadbd stopped with SIGSTOP keeps every socket open and answers
# nothing (clients see no error, only silence) until SIGCONT.
cmd_freeze_db() {
    local pid
    load_config
    pid="$(server_pid)" || die "mariadbd is not running"
    kill -STOP "$pid"
    log "mariadbd (pid $pid) frozen (SIGSTOP)"
}

cmd_thaw_db() {
    local pid
    load_config
    if pid="$(server_pid)"; then
        kill -CONT "$pid"
        log "mariadbd (pid $pid) thawed (SIGCONT)"
    fi
}

cmd_status() {
    local pid
    if [ ! -f "$MARKER" ]; then
        echo "not set up (no state dir $STATE_DIR)"
        return 1
    fi
    if [ ! -f "$READY" ]; then
        echo "incomplete: an \`up\` did not finish (state dir $STATE_DIR; run: $0 up)"
        return 1
    fi
    if pid="$(server_pid)"; then
        load_config
        echo "running: pid $pid, port $PORT, socket $SOCKET, state dir $STATE_DIR"
        return 0
    fi
    echo "stopped (state dir $STATE_DIR)"
    return 1
}

cmd_down() {
    local pid
    cmd_thaw_db 2>/dev/null || true
    if [ ! -e "$STATE_DIR" ]; then
        log "nothing to remove: $STATE_DIR does not exist"
        return 0
    fi
    [ -f "$MARKER" ] || die "$STATE_DIR was not made by this script; not removing it"
    if ! stop_server; then
        pid="$(server_pid)" || true
        if [ -n "$pid" ]; then
            log "mariadbd (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: sending SIGKILL"
            kill -KILL "$pid"
            while pid_alive "$pid"; do
                sleep 0.1
            done
        fi
    fi
    rm -rf -- "$STATE_DIR"
    log "removed $STATE_DIR"
}

[ "$#" -eq 1 ] || usage
case "$STATE_DIR" in
    /?*) ;;
    *) die "KSS_MARIADB_STATE must be an absolute path other than /, got '$STATE_DIR'" ;;
esac
case "$1" in
    up | down | restart | stop-db | start-db | kill-db | freeze-db | thaw-db)
        # One command at a time per state dir. The lock file sits beside the
        # state dir, which `up` creates and `down` removes.
        exec 9>>"$STATE_DIR.lock"
        flock -w 300 9 || die "another $0 holds $STATE_DIR.lock"
        ;;
esac
case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    stop-db) cmd_stop_db ;;
    start-db) cmd_start_db ;;
    kill-db) cmd_kill_db ;;
    freeze-db) cmd_freeze_db ;;
    thaw-db) cmd_thaw_db ;;
    restart)
        cmd_stop_db
        cmd_start_db
        ;;
    *) usage ;;
esac
