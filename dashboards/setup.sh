#!/bin/sh
# The one-shot setup of docker-compose.yml, run as the `elastic` superuser:
# lets Kibana sign in, creates one role and user per writer (roles in
# dashboards/roles/, user name = role name), then installs mapcast's index
# templates (`mapcast es setup`). Needs only Elasticsearch; the dashboards
# are imported by import.sh once Kibana is up. Safe to run again: roles,
# users and templates are overwritten, passwords set to the same values.
set -eu

ES=${MAPCAST_ELASTICSEARCH_URL:?}
AUTH="elastic:${MAPCAST_ELASTICSEARCH_PASSWORD:?}"
DASHBOARDS=${DASHBOARDS_DIR:-/usr/share/mapcast/dashboards}

echo "waiting for Elasticsearch at $ES"
until curl -fsS -u "$AUTH" "$ES/_cluster/health?wait_for_status=yellow&timeout=5s" >/dev/null; do
    sleep 3
done

echo "setting the kibana_system password"
curl -fsS -u "$AUTH" -H 'Content-Type: application/json' \
    -X POST "$ES/_security/user/kibana_system/_password" \
    -d "{\"password\":\"${KIBANA_PASSWORD:?}\"}" >/dev/null

# user = role: who may write where (passwords from .env; no quotes in them).
writer() {
    role=$1
    password=$2
    echo "creating the role and user $role"
    curl -fsS -u "$AUTH" -H 'Content-Type: application/json' \
        -X PUT "$ES/_security/role/$role" -d "@$DASHBOARDS/roles/$role.json" >/dev/null
    curl -fsS -u "$AUTH" -H 'Content-Type: application/json' \
        -X PUT "$ES/_security/user/$role" \
        -d "{\"password\":\"$password\",\"roles\":[\"$role\"]}" >/dev/null
}
writer mapcast_writer "${ES_MAPCAST_PASSWORD:?}"
writer mapcast_logstash "${ES_LOGSTASH_PASSWORD:?}"
writer mapcast_apm "${ES_APM_PASSWORD:?}"

mapcast es setup
echo "setup done"
