#!/bin/sh
# Runs once, when the db volume is initialised: lets streaming replicas (docker compose --profile
# replica) connect for replication as the database's superuser with its password.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
