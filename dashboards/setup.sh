#!/bin/sh
# The one-shot setup of docker-compose.yml: lets Kibana sign in, installs
# mapcast's index templates (`mapcast es setup`), then imports the saved
# objects of dashboards/*.ndjson into Kibana. Safe to run again: templates
# and saved objects are overwritten, passwords set to the same values.
set -eu

ES=${MAPCAST_ELASTICSEARCH_URL:?}
KIBANA=${KIBANA_URL:-http://kibana:5601}
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

mapcast es setup

echo "waiting for Kibana at $KIBANA"
until curl -fsS -u "$AUTH" "$KIBANA/api/status" | grep -q '"level":"available"'; do
    sleep 5
done

for file in "$DASHBOARDS"/*.ndjson; do
    echo "importing $file"
    answer=$(curl -fsS -u "$AUTH" -H 'kbn-xsrf: mapcast' \
        -F "file=@$file" "$KIBANA/api/saved_objects/_import?overwrite=true")
    echo "$answer" | grep -q '"success":true' || { echo "import failed: $answer" >&2; exit 1; }
done
for file in "$DASHBOARDS"/alerts/*.json; do
    [ -e "$file" ] || continue
    id=$(basename "$file" .json)
    echo "creating the alert rule $id"
    # 409: the rule exists (a rerun); an operator may have attached actions.
    status=$(curl -sS -o /tmp/rule-answer -w '%{http_code}' -u "$AUTH" -H 'kbn-xsrf: mapcast' \
        -H 'Content-Type: application/json' -X POST "$KIBANA/api/alerting/rule/$id" -d "@$file")
    case "$status" in
        200 | 409) ;;
        *) echo "alert rule $id failed ($status): $(cat /tmp/rule-answer)" >&2; exit 1 ;;
    esac
done
echo "setup done"
