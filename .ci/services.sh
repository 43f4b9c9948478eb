#!/usr/bin/env bash
# The services of the deployment tests (issue 12), next to the standalone
# PostgreSQL (5432) and MariaDB (3306) that .ci/run starts and that this
# script leaves alone:
#
# - PgBouncer on 127.0.0.1:6432 in front of PostgreSQL's database `test`, run
#   as postgres (it refuses root), trust auth, default_pool_size=4, with two
#   databases: `test` in pool_mode=transaction and `test_session` in
#   pool_mode=session (its own pool of 20 server connections);
# - a 3-node MariaDB Galera cluster (galera-4, rsync SST) on 127.0.0.1:3307,
#   3308 and 3309, root without a password over TCP, database `test`;
# - the failover tests' PostgreSQL HA (issue 26): one etcd member
#   (127.0.0.1:2479, v2 API for Patroni's python-etcd), two PostgreSQL 15 nodes
#   managed by Patroni on 127.0.0.1:5441 and 5442 (REST API on 8441 and 8442,
#   synchronous_mode, ttl 10 s, run as postgres, database `test`, trust auth);
# - HAProxy: 127.0.0.1:5440 to the Patroni node whose REST API answers 200 on
#   /primary, 127.0.0.1:3310 to the first Galera node that answers (balance
#   first, mysql-check), both with on-marked-down shutdown-sessions.
#
# Idempotent: a service that is up and healthy is left as it is (a second run
# takes a second or two); one that is not is stopped, wiped and started
# afresh, except a Galera or Patroni node that is down while the rest of its
# cluster is up: that node is started again and rejoins (the failover tests
# kill one, then run this script). Its files live in $WSGI_DBSESSION_SERVICES_DIR
# (default /var/tmp/wsgi_dbsession-services), never in the checkout.
#
# With arguments (pgbouncer, galera, patroni, haproxy), only those are started.
#
# Run it as root (it installs missing Debian packages), or source it: it runs
# in a subshell either way. Prints one line per service; exits non-zero with
# the reason and the end of the service's log when a service does not come up.

_wsgi_dbsession_services() (
    set -euo pipefail

    dir=${WSGI_DBSESSION_SERVICES_DIR:-/var/tmp/wsgi_dbsession-services}
    galera_provider=/usr/lib/galera/libgalera_smm.so
    pgbouncer_port=6432
    galera_ports=(3307 3308 3309)
    galera_name=wsgi_dbsession_test
    ports_text=$(IFS=,; echo "${galera_ports[*]}")

    fail() {
        echo "services: $*" >&2
        exit 1
    }

    # --- packages -----------------------------------------------------------

    install_packages() {
        local missing=()
        command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
        [[ -e $galera_provider ]] || missing+=(galera-4)
        command -v rsync >/dev/null 2>&1 || missing+=(rsync)
        command -v ss >/dev/null 2>&1 || missing+=(iproute2)  # the rsync SST script looks for listeners with ss
        command -v patroni >/dev/null 2>&1 || missing+=(patroni)
        command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
        command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
        command -v curl >/dev/null 2>&1 || missing+=(curl)  # Patroni's REST API and etcd's health
        ((${#missing[@]})) || return 0
        [[ $(id -u) == 0 ]] || fail "missing packages ${missing[*]}: run this script as root to install them"
        echo "services: installing ${missing[*]}"
        # The packages' own services must not start (the Debian pgbouncer
        # would take port 6432, etcd 2379): a policy-rc.d that forbids it, for the install.
        local policy=/usr/sbin/policy-rc.d own_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            own_policy=1
        fi
        local status=0
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$dir/apt.log" 2>&1; then
            # The package lists are missing or stale: refresh them, then try again.
            { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
                >>"$dir/apt.log" 2>&1 || status=$?
        fi
        ((own_policy)) && rm -f "$policy"
        ((status == 0)) || { tail -n 20 "$dir/apt.log" >&2; fail "could not install ${missing[*]}"; }
        [[ -e $galera_provider ]] || fail "galera-4 has no $galera_provider (dpkg -L galera-4)"
    }

    # The packaged pgbouncer (systemd unit or init script, /etc/pgbouncer) is
    # not ours and listens on 6432 by default: keep it stopped and disabled.
    stop_packaged_pgbouncer() {
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
        fi
        if [[ -x /etc/init.d/pgbouncer ]] && command -v update-rc.d >/dev/null 2>&1; then
            update-rc.d pgbouncer disable >/dev/null 2>&1 || true
        fi
        local pid
        for pid in $(pids_matching /etc/pgbouncer/pgbouncer.ini); do
            kill "$pid" 2>/dev/null || true
        done
    }

    # --- processes ----------------------------------------------------------

    # The ids of the processes whose command line contains $1 (a path of ours).
    pids_matching() {
        local proc args
        for proc in /proc/[0-9]*; do
            mapfile -d "" -t args 2>/dev/null <"$proc/cmdline" || continue
            [[ " ${args[*]} " == *"$1"* ]] && echo "${proc#/proc/}"
        done
        return 0
    }

    # Stop the processes whose command line contains $1: TERM, then KILL after 15 s.
    stop_matching() {
        local pids pid
        pids=$(pids_matching "$1")
        [[ -n $pids ]] || return 0
        for pid in $pids; do kill "$pid" 2>/dev/null || true; done
        for _ in $(seq 150); do
            pids=$(pids_matching "$1")
            [[ -n $pids ]] || return 0
            sleep 0.1
        done
        for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
        sleep 0.5
    }

    # Fails when something that is not ours listens on 127.0.0.1:$1.
    port_free_or_fail() {
        if ss -Htln "sport = :$1" 2>/dev/null | grep -q .; then
            fail "port $1 is taken by another program: $(ss -Htlnp "sport = :$1" | head -n 1)"
        fi
    }

    # --- PgBouncer ----------------------------------------------------------

    pgbouncer_dir=$dir/pgbouncer
    pgbouncer_ini=$pgbouncer_dir/pgbouncer.ini

    pgbouncer_config() {
        cat <<EOF
; Written by .ci/services.sh: the PgBouncer of the deployment tests.
[databases]
test = host=127.0.0.1 port=5432 dbname=test pool_mode=transaction
test_session = host=127.0.0.1 port=5432 dbname=test pool_mode=session pool_size=20

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgbouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $pgbouncer_dir/userlist.txt
admin_users = postgres
stats_users = postgres
pool_mode = transaction
default_pool_size = 4
reserve_pool_size = 0
max_client_conn = 500
logfile = $pgbouncer_dir/pgbouncer.log
pidfile = $pgbouncer_dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    }

    pgbouncer_query() {  # $1: database
        psql "host=127.0.0.1 port=$pgbouncer_port dbname=$1 user=postgres connect_timeout=3" \
            -XAtqc "SELECT 1" 2>/dev/null
    }

    pgbouncer_healthy() {
        [[ -f $pgbouncer_ini ]] && [[ $(pgbouncer_config) == "$(cat "$pgbouncer_ini")" ]] || return 1
        [[ -n $(pids_matching "$pgbouncer_ini") ]] || return 1
        [[ $(pgbouncer_query test) == 1 && $(pgbouncer_query test_session) == 1 ]]
    }

    start_pgbouncer() {
        pg_isready -q -h 127.0.0.1 -p 5432 || fail "PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)"
        if pgbouncer_healthy; then
            echo "pgbouncer: already up on 127.0.0.1:$pgbouncer_port (test: transaction, test_session: session)"
            return 0
        fi
        stop_matching "$pgbouncer_ini"
        port_free_or_fail "$pgbouncer_port"
        rm -rf "$pgbouncer_dir"
        mkdir -p "$pgbouncer_dir"
        pgbouncer_config >"$pgbouncer_ini"
        echo '"postgres" ""' >"$pgbouncer_dir/userlist.txt"
        chown -R postgres: "$pgbouncer_dir"
        # Its own log is written by the postgres user; what it says before it can open it goes here.
        pgbouncer -d -u postgres "$pgbouncer_ini" >"$dir/pgbouncer-start.log" 2>&1 \
            || { cat "$dir/pgbouncer-start.log" >&2; fail "pgbouncer did not start"; }
        for _ in $(seq 100); do
            if pgbouncer_healthy; then
                echo "pgbouncer: started on 127.0.0.1:$pgbouncer_port (test: transaction, test_session: session)"
                return 0
            fi
            sleep 0.1
        done
        cat "$dir/pgbouncer-start.log" >&2
        tail -n 20 "$pgbouncer_dir/pgbouncer.log" >&2 || true
        fail "pgbouncer did not answer on 127.0.0.1:$pgbouncer_port"
    }

    # --- Galera ---------------------------------------------------------------

    galera_dir=$dir/galera

    galera_config() {  # $1: node number, 1 to 3
        local n=$1 port=${galera_ports[$1 - 1]} gcomm=$((4566 + $1)) ist=$((4576 + $1)) sst=$((4586 + $1))
        cat <<EOF
# Written by .ci/services.sh: node $n of the deployment tests' Galera cluster.
[mysqld]
user = mysql
datadir = $galera_dir/node$n/data
socket = $galera_dir/node$n/mysqld.sock
pid-file = $galera_dir/node$n/mysqld.pid
log-error = $galera_dir/node$n/error.log
bind-address = 127.0.0.1
port = $port
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
max_connections = 500
performance_schema = OFF
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
innodb_buffer_pool_size = 32M
innodb_log_file_size = 16M
innodb_flush_log_at_trx_commit = 2
key_buffer_size = 1M
aria_pagecache_buffer_size = 8M

wsrep_on = ON
wsrep_provider = $galera_provider
wsrep_cluster_name = $galera_name
wsrep_cluster_address = gcomm://127.0.0.1:4567,127.0.0.1:4568,127.0.0.1:4569
wsrep_node_name = node$n
wsrep_node_address = 127.0.0.1
wsrep_provider_options = "base_host=127.0.0.1;base_port=$gcomm;gmcast.listen_addr=tcp://127.0.0.1:$gcomm;ist.recv_addr=127.0.0.1:$ist;gcache.size=32M"
wsrep_sst_method = rsync
wsrep_sst_receive_address = 127.0.0.1:$sst
EOF
    }

    galera_sql() {  # $1: node number; $2: SQL
        mariadb --protocol=tcp -h 127.0.0.1 -P "${galera_ports[$1 - 1]}" -uroot --connect-timeout=3 \
            -NBe "$2" 2>/dev/null
    }

    # "<cluster name> <cluster size> <state> <status>" of a node, or nothing.
    galera_state() {
        galera_sql "$1" "SELECT @@wsrep_cluster_name,
            (SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'WSREP_CLUSTER_SIZE'),
            (SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'WSREP_LOCAL_STATE_COMMENT'),
            (SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'WSREP_CLUSTER_STATUS')" \
            | tr '\t' ' ' || true
    }

    galera_healthy() {
        local n
        for n in 1 2 3; do
            [[ -f $galera_dir/node$n.cnf && $(galera_config "$n") == "$(cat "$galera_dir/node$n.cnf")" ]] || return 1
            [[ $(galera_state "$n") == "$galera_name 3 Synced Primary" ]] || return 1
            [[ $(galera_sql "$n" "SHOW DATABASES LIKE 'test'") == test ]] || return 1
        done
    }

    # Waits up to $2 seconds for node $1 to be Synced in a primary component of at least $3 nodes.
    wait_synced() {
        local n=$1 state size
        for _ in $(seq $(($2 * 5))); do
            state=$(galera_state "$n")
            read -r _ size _ <<<"$state" || true
            if [[ $state == "$galera_name "*" Synced Primary" && ${size:-0} -ge $3 ]]; then
                return 0
            fi
            [[ -n $(pids_matching "$galera_dir/node$n.cnf") ]] || break  # it died
            sleep 0.2
        done
        tail -n 30 "$galera_dir/node$n/error.log" >&2 || true
        fail "galera node $n (127.0.0.1:${galera_ports[$n - 1]}) did not reach Synced (state: ${state:-no answer})"
    }

    start_node() {  # $1: node number; $2...: extra options
        local n=$1
        shift
        # setsid and no inherited descriptors: the node outlives this script and its caller's pipes.
        setsid mariadbd --defaults-file="$galera_dir/node$n.cnf" "$@" </dev/null >/dev/null 2>&1 &
    }

    # The nodes are ours and configured as now, and at least one is a Synced
    # member of a primary component: the others can rejoin it.
    galera_rejoinable() {
        local n synced=0
        for n in 1 2 3; do
            [[ -f $galera_dir/node$n.cnf && $(galera_config "$n") == "$(cat "$galera_dir/node$n.cnf")" ]] || return 1
            [[ $(galera_state "$n") == "$galera_name "*" Synced Primary" ]] && synced=1
        done
        ((synced))
    }

    start_galera() {
        if galera_healthy; then
            echo "galera: already up, 3 nodes Synced on 127.0.0.1:$ports_text"
            return 0
        fi
        local started=$SECONDS n
        if galera_rejoinable; then
            # A node that died (the failover tests kill one) rejoins by IST or
            # SST; the cluster and its data stay.
            local rejoined=()
            for n in 1 2 3; do
                [[ -z $(pids_matching "$galera_dir/node$n.cnf") ]] || continue
                start_node "$n"
                wait_synced "$n" 60 2
                rejoined+=("$n")
            done
            for _ in $(seq 50); do
                galera_healthy && break
                sleep 0.2
            done
            if galera_healthy; then
                echo "galera: node ${rejoined[*]:-none} rejoined, 3 nodes Synced on 127.0.0.1:$ports_text in $((SECONDS - started)) s"
                return 0
            fi
        fi
        # Anything left from an earlier run (nodes, rsync SST daemons): stopped, then wiped.
        stop_matching "$galera_dir/"
        for n in 1 2 3; do
            port_free_or_fail "${galera_ports[$n - 1]}"
            port_free_or_fail $((4566 + n))
            port_free_or_fail $((4576 + n))
            port_free_or_fail $((4586 + n))
        done
        rm -rf "$galera_dir"
        mkdir -p "$galera_dir"
        for n in 1 2 3; do
            mkdir -p "$galera_dir/node$n/data"
            galera_config "$n" >"$galera_dir/node$n.cnf"
        done
        chown -R mysql: "$galera_dir"
        # The first node gets system tables (root without a password from 127.0.0.1);
        # the others start empty and receive everything by SST from the cluster.
        mariadb-install-db --defaults-file="$galera_dir/node1.cnf" --user=mysql \
            --auth-root-authentication-method=normal --skip-test-db >"$galera_dir/install-db.log" 2>&1 \
            || { tail -n 20 "$galera_dir/install-db.log" >&2; fail "mariadb-install-db failed"; }
        start_node 1 --wsrep-new-cluster
        wait_synced 1 60 1
        galera_sql 1 "CREATE DATABASE IF NOT EXISTS test" || fail "could not create database test on galera node 1"
        # One joiner at a time: an rsync donor serves one SST at once.
        for n in 2 3; do
            start_node "$n"
            wait_synced "$n" 60 "$n"
        done
        for _ in $(seq 50); do
            galera_healthy && break
            sleep 0.2
        done
        galera_healthy || fail "the galera cluster did not reach 3 Synced nodes with database test"
        echo "galera: started 3 nodes Synced on 127.0.0.1:$ports_text in $((SECONDS - started)) s"
    }


    # --- etcd and Patroni (the PostgreSQL HA of the failover tests) -------------

    etcd_port=2479
    etcd_peer_port=2480
    patroni_ports=(5441 5442)
    patroni_rest_ports=(8441 8442)
    patroni_scope=wsgi_dbsession_ha
    pg_bin=/usr/lib/postgresql/15/bin
    etcd_dir=$dir/etcd
    patroni_dir=$dir/patroni

    etcd_healthy() {
        [[ $(curl -fsS --max-time 3 "http://127.0.0.1:$etcd_port/health" 2>/dev/null) == *'"health":"true"'* ]] \
            && [[ -n $(pids_matching "$etcd_dir/data") ]]
    }

    start_etcd() {
        if etcd_healthy; then
            echo "etcd: already up on 127.0.0.1:$etcd_port"
            return 0
        fi
        stop_matching "$etcd_dir/data"
        port_free_or_fail "$etcd_port"
        port_free_or_fail "$etcd_peer_port"
        rm -rf "$etcd_dir"
        mkdir -p "$etcd_dir"
        # Patroni 3.0's etcd client (python3-etcd) speaks the v2 API.
        setsid etcd --name wsgi_dbsession --data-dir "$etcd_dir/data" --enable-v2=true \
            --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
            --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
            --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
            --initial-cluster "wsgi_dbsession=http://127.0.0.1:$etcd_peer_port" \
            </dev/null >"$etcd_dir/etcd.log" 2>&1 &
        for _ in $(seq 100); do
            if etcd_healthy; then
                echo "etcd: started on 127.0.0.1:$etcd_port"
                return 0
            fi
            sleep 0.1
        done
        tail -n 20 "$etcd_dir/etcd.log" >&2 || true
        fail "etcd did not answer on 127.0.0.1:$etcd_port"
    }

    patroni_config() {  # $1: node number, 1 or 2
        local n=$1 port=${patroni_ports[$1 - 1]} rest=${patroni_rest_ports[$1 - 1]}
        cat <<EOF
# Written by .ci/services.sh: node $n of the failover tests' PostgreSQL HA.
scope: $patroni_scope
namespace: /wsgi_dbsession/
name: pg$n
log:
  dir: $patroni_dir/pg$n
  level: INFO
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd:
  host: 127.0.0.1:$etcd_port
bootstrap:
  dcs:
    # A dead primary's leader key lapses after ttl seconds; the standby
    # checks every loop_wait (loop_wait + 2 * retry_timeout <= ttl).
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    # A commit is acknowledged once the standby has it: a failover loses no
    # acknowledged write.
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        max_connections: 200
        shared_buffers: 32MB
        max_wal_senders: 5
        max_replication_slots: 5
        wal_keep_size: 64MB
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  data_dir: $patroni_dir/pg$n/data
  bin_dir: $pg_bin
  pgpass: $patroni_dir/pg$n/pgpass
  # The standby's copy starts at once, not after a spread checkpoint (minutes).
  basebackup:
    - checkpoint: fast
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: $patroni_dir/pg$n
EOF
    }

    patroni_config_current() {
        local n
        for n in 1 2; do
            [[ -f $patroni_dir/pg$n.yml && $(patroni_config "$n") == "$(cat "$patroni_dir/pg$n.yml")" ]] || return 1
        done
    }

    # Whether node $1's REST API answers 200 on $2: /primary (the leader,
    # running), /sync (the synchronous standby, streaming).
    patroni_is() {
        curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:${patroni_rest_ports[$1 - 1]}/$2" 2>/dev/null
    }

    patroni_healthy() {
        patroni_config_current || return 1
        [[ -n $(pids_matching "$patroni_dir/pg1.yml") && -n $(pids_matching "$patroni_dir/pg2.yml") ]] || return 1
        { patroni_is 1 primary && patroni_is 2 sync; } || { patroni_is 2 primary && patroni_is 1 sync; } || return 1
        local port
        for port in "${patroni_ports[@]}"; do
            [[ $(psql "host=127.0.0.1 port=$port dbname=test user=postgres connect_timeout=3" \
                -XAtqc "SELECT 1" 2>/dev/null) == 1 ]] || return 1
        done
    }

    start_patroni_node() {  # $1: node number
        # As postgres (PostgreSQL refuses root); setsid: it outlives this script.
        runuser -u postgres -- setsid patroni "$patroni_dir/pg$1.yml" </dev/null >>"$patroni_dir/pg$1/patroni.out" 2>&1 &
    }

    # Creates the database test on the leader once there is one.
    patroni_create_test() {
        local n port
        for _ in $(seq 300); do
            for n in 1 2; do
                if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${patroni_rest_ports[$n - 1]}/primary" 2>/dev/null; then
                    port=${patroni_ports[$n - 1]}
                    psql "host=127.0.0.1 port=$port dbname=postgres user=postgres connect_timeout=3" -XAtqc \
                        "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 && return 0
                    psql "host=127.0.0.1 port=$port dbname=postgres user=postgres connect_timeout=3" -Xqc \
                        "CREATE DATABASE test" >/dev/null 2>&1 && return 0
                fi
            done
            sleep 0.2
        done
        return 1
    }

    start_patroni() {
        if patroni_healthy; then
            echo "patroni: already up, leader and sync standby on 127.0.0.1:${patroni_ports[0]},${patroni_ports[1]}"
            return 0
        fi
        local started=$SECONDS n
        if patroni_config_current && { patroni_is 1 primary || patroni_is 2 primary; }; then
            # A node that died (the failover tests kill one) rejoins as a
            # standby (pg_rewind when it has to); the cluster stays.
            local rejoined=()
            for n in 1 2; do
                [[ -z $(pids_matching "$patroni_dir/pg$n.yml") ]] || continue
                start_patroni_node "$n"
                rejoined+=("$n")
            done
            for _ in $(seq 600); do
                patroni_healthy && break
                sleep 0.2
            done
            if patroni_healthy; then
                echo "patroni: node ${rejoined[*]:-none} rejoined, leader and sync standby on 127.0.0.1:${patroni_ports[0]},${patroni_ports[1]} in $((SECONDS - started)) s"
                return 0
            fi
        fi
        stop_matching "$patroni_dir/"
        for n in 1 2; do
            port_free_or_fail "${patroni_ports[$n - 1]}"
            port_free_or_fail "${patroni_rest_ports[$n - 1]}"
        done
        # The cluster's keys go with its data: a fresh cluster bootstraps anew.
        curl -fsS --max-time 3 -X DELETE "http://127.0.0.1:$etcd_port/v2/keys/wsgi_dbsession?recursive=true" \
            >/dev/null 2>&1 || true
        rm -rf "$patroni_dir"
        for n in 1 2; do
            mkdir -p "$patroni_dir/pg$n"
            patroni_config "$n" >"$patroni_dir/pg$n.yml"
        done
        chown -R postgres: "$patroni_dir"
        chmod 700 "$patroni_dir"/pg?
        # The first node bootstraps (initdb) and leads; the second copies it
        # (pg_basebackup) and becomes the synchronous standby.
        start_patroni_node 1
        patroni_create_test || { tail -n 20 "$patroni_dir/pg1/patroni.log" >&2 || true; fail "patroni node 1 did not become the leader"; }
        start_patroni_node 2
        for _ in $(seq 600); do
            patroni_healthy && break
            sleep 0.2
        done
        if ! patroni_healthy; then
            curl -sS --max-time 3 "http://127.0.0.1:${patroni_rest_ports[0]}/cluster" >&2 || true
            tail -n 20 "$patroni_dir/pg2/patroni.log" >&2 || true
            fail "the patroni cluster did not reach a leader and a sync standby with database test"
        fi
        echo "patroni: started leader and sync standby on 127.0.0.1:${patroni_ports[0]},${patroni_ports[1]} in $((SECONDS - started)) s"
    }

    # --- HAProxy ----------------------------------------------------------------

    haproxy_pg_port=5440
    haproxy_galera_port=3310
    haproxy_dir=$dir/haproxy
    haproxy_cfg=$haproxy_dir/haproxy.cfg
    haproxy_check_user=haproxy_check

    haproxy_config() {
        cat <<EOF
# Written by .ci/services.sh: the failover tests' HAProxy.
global
    maxconn 2000
    pidfile $haproxy_dir/haproxy.pid

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 2s
    # Checked every second; down after 2 failures, up after 1 success. A
    # server marked down has its connections cut, so clients reconnect to
    # the new one at once instead of waiting on a dead or demoted server.
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions

# To the Patroni node that is primary: its REST API answers 200 on /primary.
listen postgres
    bind 127.0.0.1:$haproxy_pg_port
    option httpchk GET /primary
    http-check expect status 200
    server pg1 127.0.0.1:${patroni_ports[0]} check port ${patroni_rest_ports[0]}
    server pg2 127.0.0.1:${patroni_ports[1]} check port ${patroni_rest_ports[1]}

# To the first Galera node that answers: one writer at a time, no
# certification conflicts between nodes.
listen galera
    bind 127.0.0.1:$haproxy_galera_port
    balance first
    option mysql-check user $haproxy_check_user post-41
    server galera1 127.0.0.1:${galera_ports[0]} check
    server galera2 127.0.0.1:${galera_ports[1]} check
    server galera3 127.0.0.1:${galera_ports[2]} check
EOF
    }

    haproxy_healthy() {
        [[ -f $haproxy_cfg ]] && [[ $(haproxy_config) == "$(cat "$haproxy_cfg")" ]] || return 1
        [[ -n $(pids_matching "$haproxy_cfg") ]] || return 1
        [[ $(psql "host=127.0.0.1 port=$haproxy_pg_port dbname=test user=postgres connect_timeout=3" \
            -XAtqc "SELECT 1" 2>/dev/null) == 1 ]] || return 1
        [[ $(mariadb --protocol=tcp -h 127.0.0.1 -P "$haproxy_galera_port" -uroot --connect-timeout=3 \
            -NBe "SELECT 1" test 2>/dev/null) == 1 ]]
    }

    start_haproxy() {
        local healthy=0
        for _ in $(seq 30); do  # its checks take a second or two after a node rejoins
            haproxy_healthy && { healthy=1; break; }
            [[ -f $haproxy_cfg && -n $(pids_matching "$haproxy_cfg") ]] || break
            sleep 0.2
        done
        if ((healthy)); then
            echo "haproxy: already up on 127.0.0.1:$haproxy_pg_port (patroni primary), 127.0.0.1:$haproxy_galera_port (galera, first)"
            return 0
        fi
        stop_matching "$haproxy_cfg"
        port_free_or_fail "$haproxy_pg_port"
        port_free_or_fail "$haproxy_galera_port"
        # mysql-check logs in as this user (no password, no rights): a check
        # that only opened and closed the socket would count as a connection
        # error against 127.0.0.1, and max_connect_errors would block the host.
        galera_sql 1 "CREATE USER IF NOT EXISTS '$haproxy_check_user'@'127.0.0.1'" \
            || galera_sql 2 "CREATE USER IF NOT EXISTS '$haproxy_check_user'@'127.0.0.1'" \
            || fail "could not create the user $haproxy_check_user on the galera cluster"
        rm -rf "$haproxy_dir"
        mkdir -p "$haproxy_dir"
        haproxy_config >"$haproxy_cfg"
        haproxy -D -f "$haproxy_cfg" >"$haproxy_dir/haproxy.log" 2>&1 \
            || { cat "$haproxy_dir/haproxy.log" >&2; fail "haproxy did not start"; }
        for _ in $(seq 100); do
            if haproxy_healthy; then
                echo "haproxy: started on 127.0.0.1:$haproxy_pg_port (patroni primary), 127.0.0.1:$haproxy_galera_port (galera, first)"
                return 0
            fi
            sleep 0.1
        done
        cat "$haproxy_dir/haproxy.log" >&2
        fail "haproxy did not pass connections to the patroni primary on 127.0.0.1:$haproxy_pg_port and galera on 127.0.0.1:$haproxy_galera_port"
    }

    mkdir -p "$dir"
    install_packages
    local services=("$@")
    ((${#services[@]})) || services=(pgbouncer galera patroni haproxy)
    local service
    for service in "${services[@]}"; do
        case $service in
            pgbouncer) stop_packaged_pgbouncer; start_pgbouncer ;;
            galera) start_galera ;;
            patroni) start_etcd; start_patroni ;;
            haproxy) start_haproxy ;;
            *) fail "unknown service $service (pgbouncer, galera, patroni, haproxy)" ;;
        esac
    done
)

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    _wsgi_dbsession_services "$@"
else
    _wsgi_dbsession_services "$@"
    # shellcheck disable=SC2317  # reached when sourced
    return $?
fi
