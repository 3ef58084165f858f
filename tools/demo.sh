#!/usr/bin/env bash
# `make demo`: start the local servers, publish a demo load with loadgen,
# drain it with sluice while it shows a live status line, then check the
# row count against what was published and say how to look at the data.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

count=${DEMO_COUNT:-200000}
queue=${DEMO_QUEUE:-demo_events}

tools/servers.sh start
eval "$(tools/servers.sh env)"

echo "== publishing $count JSON events to queue '$queue' (loadgen, publisher confirms)"
psql -qX "$POSTGRES_DSN" -c "DROP TABLE IF EXISTS $queue" >/dev/null
build/loadgen --url "$RABBITMQ_URL" --queue "$queue" --declare --purge \
	--count "$count" --size 200 --shape json --connections 2

echo "== draining with sluice (--until-empty: it exits once the queue is empty)"
shards=${SLUICE_SHARDS:-$(nproc)}
start=$(date +%s.%N)
SLUICE_QUEUE=$queue SLUICE_TABLE=$queue build/sluice --until-empty --stats-interval 1 \
	--shards "$shards"
end=$(date +%s.%N)

rows=$(psql -qAtX "$POSTGRES_DSN" -c "SELECT count(*) FROM $queue")
rate=$(awk -v r="$rows" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", r / (e - s) }')
echo "== sluice committed $rows rows in $(awk -v s="$start" -v e="$end" \
	'BEGIN { printf "%.1f", e - s }') s: $rate rows/s with $shards shards (start-up included)"
if [ "$rows" != "$count" ]; then
	echo "demo: FAILED: published $count messages but the table holds $rows rows" >&2
	exit 1
fi
echo "== every published message is a row: $rows of $count"
cat <<EOT

Look at the data:
  psql "$POSTGRES_DSN" -c 'SELECT message_id, headers, published_at, convert_from(body, '\''UTF8'\'')::jsonb->>'\''type'\'' AS type FROM $queue LIMIT 5'
Stop the local servers:
  make servers-stop
EOT
