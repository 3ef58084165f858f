// go_pgx: a Go consumer the usual way: amqp091-go delivers into a channel,
// rows are batched and written with pgx v4 CopyFrom (binary COPY, committed
// when it returns: it runs as its own implicit transaction), then the whole
// batch is acked with one multiple=true ack. A partial batch is flushed
// LINGER_MS after its first row, like sluice's --linger-ms; ingested_at is
// stamped on receipt, as sluice does.
//
// Env: RABBITMQ_URL, POSTGRES_DSN, QUEUE, TABLE, PREFETCH (2000), BATCH (1000),
// LINGER_MS (20), IDLE_EXIT_MS (1000). Last line on stdout: a JSON summary
// (msgs, batches, first_msg_unix, last_commit_unix).
//
// Built from Debian's Go packages only (golang-go, golang-github-rabbitmq-
// amqp091-go-dev, golang-github-jackc-pgx-v4-dev), in GOPATH mode, no modules:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o build/peers/go_pgx ./bench/peers/go_pgx
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v4"
	amqp "github.com/rabbitmq/amqp091-go"
)

func envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		log.Fatalf("go_pgx: %s: not a number: %q", name, v)
	}
	return n
}

// amqp091-go gives "" for an absent property; sluice writes NULL for one.
// (An explicitly empty message_id or content_type becomes NULL here too.)
func nullIfEmpty(s string) interface{} {
	if s == "" {
		return nil
	}
	return s
}

var columns = []string{"exchange", "routing_key", "message_id", "content_type", "headers",
	"published_at", "ingested_at", "body"}

func row(d *amqp.Delivery) ([]interface{}, error) {
	var headers interface{}
	if d.Headers != nil {
		j, err := json.Marshal(d.Headers)
		if err != nil {
			return nil, err
		}
		headers = j // pgtype takes []byte as the JSON text of a jsonb
	}
	var published interface{}
	if !d.Timestamp.IsZero() {
		published = d.Timestamp
	}
	return []interface{}{d.Exchange, d.RoutingKey, nullIfEmpty(d.MessageId),
		nullIfEmpty(d.ContentType), headers, published, time.Now(), d.Body}, nil
}

func main() {
	log.SetFlags(0)
	url := os.Getenv("RABBITMQ_URL")
	if url == "" {
		url = "amqp://guest:guest@localhost:5672/"
	}
	queue := os.Getenv("QUEUE")
	if queue == "" {
		log.Fatal("go_pgx: QUEUE is required")
	}
	table := os.Getenv("TABLE")
	if table == "" {
		table = queue
	}
	prefetch := envInt("PREFETCH", 2000)
	batch := envInt("BATCH", 1000)
	if batch < 1 {
		batch = 1
	}
	linger := time.Duration(envInt("LINGER_MS", 20)) * time.Millisecond
	idle := time.Duration(envInt("IDLE_EXIT_MS", 1000)) * time.Millisecond

	ctx := context.Background()
	db, err := pgx.Connect(ctx, os.Getenv("POSTGRES_DSN"))
	if err != nil {
		log.Fatalf("go_pgx: postgres: %v", err)
	}
	defer db.Close(ctx)

	conn, err := amqp.Dial(url)
	if err != nil {
		log.Fatalf("go_pgx: rabbitmq: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatalf("go_pgx: channel: %v", err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		log.Fatalf("go_pgx: qos: %v", err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		log.Fatalf("go_pgx: consume: %v", err)
	}

	ident := pgx.Identifier(strings.Split(table, "."))
	rows := make([][]interface{}, 0, batch)
	var lastTag uint64
	var msgs, batches int
	var firstMsg, lastCommit time.Time

	flush := func() {
		if len(rows) == 0 {
			return
		}
		if _, err := db.CopyFrom(ctx, ident, columns, pgx.CopyFromRows(rows)); err != nil {
			log.Fatalf("go_pgx: copy: %v", err)
		}
		// Committed: ack the batch.
		if err := ch.Ack(lastTag, true); err != nil {
			log.Fatalf("go_pgx: ack: %v", err)
		}
		msgs += len(rows)
		batches++
		lastCommit = time.Now()
		rows = rows[:0]
	}

	lingerTimer := time.NewTimer(time.Hour)
	lingerTimer.Stop()
	idleTimer := time.NewTimer(idle)
loop:
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				log.Fatal("go_pgx: delivery channel closed by the broker")
			}
			if firstMsg.IsZero() {
				firstMsg = time.Now()
			}
			r, err := row(&d)
			if err != nil {
				log.Fatalf("go_pgx: headers: %v", err)
			}
			if len(rows) == 0 {
				lingerTimer.Reset(linger)
			}
			rows = append(rows, r)
			lastTag = d.DeliveryTag
			if len(rows) >= batch {
				if !lingerTimer.Stop() {
					select {
					case <-lingerTimer.C:
					default:
					}
				}
				flush()
			}
			if !idleTimer.Stop() {
				select {
				case <-idleTimer.C:
				default:
				}
			}
			idleTimer.Reset(idle)
		case <-lingerTimer.C:
			flush()
		case <-idleTimer.C:
			flush()
			break loop
		}
	}
	// Channel.Close waits for close-ok, so the acks sent before it are processed.
	if err := ch.Close(); err != nil {
		log.Fatalf("go_pgx: channel close: %v", err)
	}
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	fmt.Printf("{\"system\":\"go-pgx\",\"msgs\":%d,\"batches\":%d,\"first_msg_unix\":%.6f,\"last_commit_unix\":%.6f}\n",
		msgs, batches, unix(firstMsg), unix(lastCommit))
}
