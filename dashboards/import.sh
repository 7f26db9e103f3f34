#!/bin/sh
# The one-shot dashboard import of docker-compose.yml: the saved objects of
# dashboards/*.ndjson and the alert rules of dashboards/alerts/ into Kibana.
# Nothing waits for it. Safe to run again: saved objects are overwritten,
# existing rules kept.
set -eu

KIBANA=${KIBANA_URL:-http://kibana:5601}
AUTH="${KIBANA_USERNAME:-elastic}:${KIBANA_USER_PASSWORD:?}"
DASHBOARDS=${DASHBOARDS_DIR:-/usr/share/mapcast/dashboards}

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
echo "dashboards imported"
