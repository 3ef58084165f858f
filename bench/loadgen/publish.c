/* One publishing connection per thread: log in, enable publisher confirms,
 * publish this connection's share of the sequence paced by a token bucket,
 * and settle basic.ack / basic.nack / basic.return frames as they arrive. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp_tcp_socket.h>

#include "loadgen.h"

#define LG_CHANNEL 1
#define LG_IO_TIMEOUT_S 10
#define LG_POLL_MS 100
#define LG_POLL_EVERY 64 /* publishes between non-blocking confirm reads */
#define LG_STOP_GRACE_NS (5 * LG_NS_PER_S)
#define LG_STALL_NS (30 * LG_NS_PER_S)

enum { LG_SLOT_FREE, LG_SLOT_PENDING, LG_SLOT_RETURNED };
enum { LG_HDR_SEQ, LG_HDR_SHAPE, LG_HDR_PUBLISH_US };

struct lg_bucket {
	double rate; /* tokens per second; 0 = unpaced */
	double burst;
	double tokens;
	uint64_t last_ns;
};

static void lg_describe_close(const amqp_method_t *m, char *buf, size_t n)
{
	if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
		const amqp_connection_close_t *c = m->decoded;

		snprintf(buf, n, "connection closed by broker: %u %.*s",
			 c->reply_code, (int)c->reply_text.len,
			 (const char *)c->reply_text.bytes);
	} else if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
		const amqp_channel_close_t *c = m->decoded;

		snprintf(buf, n, "channel closed by broker: %u %.*s",
			 c->reply_code, (int)c->reply_text.len,
			 (const char *)c->reply_text.bytes);
	} else {
		snprintf(buf, n, "unexpected method 0x%08x", (unsigned)m->id);
	}
}

static void lg_describe_reply(amqp_rpc_reply_t r, char *buf, size_t n)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		snprintf(buf, n, "ok");
		break;
	case AMQP_RESPONSE_NONE:
		snprintf(buf, n, "no reply from broker");
		break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(buf, n, "%s", amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		lg_describe_close(&r.reply, buf, n);
		break;
	}
}

/* Reports a failed RPC as "<who>: <what>: <reason>"; returns -1 on failure. */
static int lg_check_reply(amqp_rpc_reply_t r, const char *who, const char *what)
{
	char reason[256];

	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return 0;
	lg_describe_reply(r, reason, sizeof(reason));
	lg_error("%s: %s: %s", who, what, reason);
	return -1;
}

static int lg_socket_open(amqp_connection_state_t conn,
			  const struct lg_config *cfg, const char *who)
{
	struct timeval tv = { .tv_sec = LG_IO_TIMEOUT_S };
	amqp_socket_t *sock = amqp_tcp_socket_new(conn);
	int rc;

	if (!sock) {
		lg_error("%s: cannot create socket", who);
		return -1;
	}
	rc = amqp_socket_open_noblock(sock, cfg->amqp.host, cfg->amqp.port, &tv);
	if (rc != AMQP_STATUS_OK) {
		lg_error("%s: connect to %s:%d: %s", who, cfg->amqp.host,
			 cfg->amqp.port, amqp_error_string2(rc));
		return -1;
	}
	if (amqp_set_handshake_timeout(conn, &tv) != AMQP_STATUS_OK ||
	    amqp_set_rpc_timeout(conn, &tv) != AMQP_STATUS_OK) {
		lg_error("%s: cannot set I/O timeouts", who);
		return -1;
	}
	return 0;
}

/* Connects, logs in and opens channel 1; NULL (reported) on failure. */
static amqp_connection_state_t lg_conn_open(const struct lg_config *cfg,
					    const char *who)
{
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_rpc_reply_t r;

	if (!conn) {
		lg_error("%s: out of memory", who);
		return NULL;
	}
	if (lg_socket_open(conn, cfg, who) < 0)
		goto fail;
	r = amqp_login(conn, cfg->amqp.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0,
		       AMQP_SASL_METHOD_PLAIN, cfg->amqp.user,
		       cfg->amqp.password);
	if (lg_check_reply(r, who, "login") < 0)
		goto fail;
	amqp_channel_open(conn, LG_CHANNEL);
	if (lg_check_reply(amqp_get_rpc_reply(conn), who, "channel.open") < 0)
		goto fail;
	return conn;
fail:
	amqp_destroy_connection(conn);
	return NULL;
}

/* Closes politely; a failure here cannot change the run's outcome. */
static void lg_conn_close(amqp_connection_state_t conn, const char *who)
{
	amqp_rpc_reply_t r = amqp_channel_close(conn, LG_CHANNEL,
						AMQP_REPLY_SUCCESS);

	if (lg_check_reply(r, who, "channel.close") == 0) {
		r = amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
		lg_check_reply(r, who, "connection.close");
	}
	amqp_destroy_connection(conn);
}

static int lg_setup_queue(amqp_connection_state_t conn,
			  const struct lg_config *cfg, const char *queue)
{
	amqp_bytes_t name = amqp_cstring_bytes(queue);
	char what[300];

	if (cfg->declare) {
		amqp_queue_declare(conn, LG_CHANNEL, name, 0, 1, 0, 0,
				   amqp_empty_table);
		snprintf(what, sizeof(what), "declare queue '%s'", queue);
		if (lg_check_reply(amqp_get_rpc_reply(conn), "setup", what) < 0)
			return -1;
	}
	if (cfg->purge) {
		amqp_queue_purge(conn, LG_CHANNEL, name);
		snprintf(what, sizeof(what), "purge queue '%s'", queue);
		if (lg_check_reply(amqp_get_rpc_reply(conn), "setup", what) < 0)
			return -1;
	}
	return 0;
}

int lg_setup_queues(const struct lg_config *cfg)
{
	amqp_connection_state_t conn;

	if (!cfg->declare && !cfg->purge)
		return 0;
	conn = lg_conn_open(cfg, "setup");
	if (!conn)
		return -1;
	for (size_t i = 0; i < cfg->nqueues; i++) {
		if (lg_setup_queue(conn, cfg, cfg->queues[i]) < 0) {
			amqp_destroy_connection(conn);
			return -1;
		}
	}
	lg_conn_close(conn, "setup");
	return 0;
}

static void lg_worker_error(struct lg_worker *w, const char *what,
			    const char *reason)
{
	lg_error("connection %u: %s: %s", w->index, what, reason);
	atomic_store(&w->failed_hard, true);
	atomic_store(&lg_stop, LG_STOP_ERROR);
}

static void lg_props_init(struct lg_worker *w)
{
	const struct lg_config *cfg = w->cfg;
	amqp_table_entry_t *h = w->headers;

	h[LG_HDR_SEQ].key = amqp_cstring_bytes("seq");
	h[LG_HDR_SEQ].value.kind = AMQP_FIELD_KIND_I64;
	h[LG_HDR_SHAPE].key = amqp_cstring_bytes("shape");
	h[LG_HDR_SHAPE].value.kind = AMQP_FIELD_KIND_UTF8;
	h[LG_HDR_SHAPE].value.value.bytes =
		amqp_cstring_bytes(lg_shape_name(cfg->shape));
	h[LG_HDR_PUBLISH_US].key = amqp_cstring_bytes("x-publish-us");
	h[LG_HDR_PUBLISH_US].value.kind = AMQP_FIELD_KIND_I64;

	memset(&w->props, 0, sizeof(w->props));
	w->props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG |
			  AMQP_BASIC_DELIVERY_MODE_FLAG |
			  AMQP_BASIC_MESSAGE_ID_FLAG |
			  AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
	w->props.content_type =
		amqp_cstring_bytes(lg_shape_content_type(cfg->shape));
	w->props.delivery_mode = cfg->persistent ? 2 : 1;
	w->props.headers.entries = w->headers;
	w->props.headers.num_entries = cfg->timestamp_us ? 3 : 2;
}

int lg_worker_open(struct lg_worker *w, const struct lg_config *cfg,
		   unsigned index)
{
	char who[32];

	memset(w, 0, sizeof(*w));
	w->cfg = cfg;
	w->index = index;
	w->next_tag = 1;
	w->low_tag = 1;
	/* seq = index + k * connections for k = 0, 1, ... while seq < count */
	if (cfg->count == UINT64_MAX)
		w->quota = UINT64_MAX;
	else if (index < cfg->count)
		w->quota = (cfg->count - index - 1) / cfg->connections + 1;
	snprintf(who, sizeof(who), "connection %u", index);

	w->ring = calloc(cfg->confirm_window, sizeof(*w->ring));
	if (!w->ring || lg_body_init(&w->body, cfg->size) < 0) {
		lg_error("%s: out of memory", who);
		goto fail;
	}
	lg_props_init(w);
	w->conn = lg_conn_open(cfg, who);
	if (!w->conn)
		goto fail;
	amqp_confirm_select(w->conn, LG_CHANNEL);
	if (lg_check_reply(amqp_get_rpc_reply(w->conn), who,
			   "confirm.select") < 0)
		goto fail;
	return 0;
fail:
	lg_worker_free(w);
	return -1;
}

void lg_worker_free(struct lg_worker *w)
{
	if (w->conn)
		amqp_destroy_connection(w->conn);
	w->conn = NULL;
	free(w->ring);
	w->ring = NULL;
	lg_body_free(&w->body);
}

/* ---- publisher confirms ---- */

static void lg_settle(struct lg_worker *w, uint64_t tag, bool ack)
{
	struct lg_slot *slot = &w->ring[tag % w->cfg->confirm_window];

	if (slot->state == LG_SLOT_FREE)
		return;
	if (slot->state == LG_SLOT_RETURNED)
		atomic_fetch_add_explicit(&w->returned, 1, memory_order_relaxed);
	else if (!ack)
		atomic_fetch_add_explicit(&w->nacked, 1, memory_order_relaxed);
	else {
		atomic_fetch_add_explicit(&w->confirmed, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&w->bytes, slot->size,
					  memory_order_relaxed);
	}
	slot->state = LG_SLOT_FREE;
}

/* basic.ack / basic.nack, honouring `multiple`. */
static int lg_on_confirm(struct lg_worker *w, uint64_t tag, bool multiple,
			 bool ack)
{
	char reason[64];

	if (tag < w->low_tag || tag >= w->next_tag) {
		if (tag < w->low_tag && multiple)
			return 0; /* nothing new covered */
		snprintf(reason, sizeof(reason), "delivery tag %" PRIu64
			 " outside [%" PRIu64 ", %" PRIu64 ")",
			 tag, w->low_tag, w->next_tag);
		lg_worker_error(w, ack ? "basic.ack" : "basic.nack", reason);
		return -1;
	}
	if (multiple) {
		for (uint64_t t = w->low_tag; t <= tag; t++)
			lg_settle(w, t, ack);
	} else {
		lg_settle(w, tag, ack);
	}
	while (w->low_tag < w->next_tag &&
	       w->ring[w->low_tag % w->cfg->confirm_window].state ==
		       LG_SLOT_FREE)
		w->low_tag++;
	return 0;
}

/* Maps a returned message's message_id "<seed>-<seq>" back to its tag. */
static int lg_returned_tag(const struct lg_worker *w, amqp_bytes_t id,
			   uint64_t *tag)
{
	const struct lg_config *cfg = w->cfg;
	char text[48], *dash, *end;
	uint64_t seq;

	if (id.len == 0 || id.len >= sizeof(text))
		return -1;
	memcpy(text, id.bytes, id.len);
	text[id.len] = '\0';
	dash = strchr(text, '-');
	if (!dash)
		return -1;
	seq = strtoull(dash + 1, &end, 10);
	if (*end != '\0' || seq % cfg->connections != w->index)
		return -1;
	*tag = seq / cfg->connections + 1; /* k-th publish carries tag k+1 */
	if (*tag < w->low_tag || *tag >= w->next_tag)
		return -1;
	return w->ring[*tag % cfg->confirm_window].state == LG_SLOT_PENDING ?
		       0 : -1;
}

/* basic.return: the header and body frames follow; the ack for the same tag
 * comes after them and then counts the message as returned, not confirmed. */
static int lg_on_return(struct lg_worker *w, const amqp_basic_return_t *ret)
{
	char reason[320];
	amqp_message_t msg;
	amqp_rpc_reply_t r;
	uint64_t tag;

	snprintf(reason, sizeof(reason), "queue '%.*s': %u %.*s",
		 (int)ret->routing_key.len, (const char *)ret->routing_key.bytes,
		 ret->reply_code, (int)ret->reply_text.len,
		 (const char *)ret->reply_text.bytes);
	if (!w->said_returned) {
		lg_error("connection %u: message returned by broker: %s",
			 w->index, reason);
		w->said_returned = true;
	}
	r = amqp_read_message(w->conn, LG_CHANNEL, &msg, 0);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		lg_describe_reply(r, reason, sizeof(reason));
		lg_worker_error(w, "reading returned message", reason);
		return -1;
	}
	if (lg_returned_tag(w, msg.properties.message_id, &tag) < 0) {
		amqp_destroy_message(&msg);
		lg_worker_error(w, "basic.return", "unknown message_id");
		return -1;
	}
	amqp_destroy_message(&msg);
	w->ring[tag % w->cfg->confirm_window].state = LG_SLOT_RETURNED;
	return 0;
}

/* A resource alarm: publishing stalls until it clears, so say why once. */
static void lg_on_blocked(struct lg_worker *w,
			  const amqp_connection_blocked_t *b)
{
	if (w->said_blocked)
		return;
	lg_error("connection %u: broker blocked publishing: %.*s", w->index,
		 (int)b->reason.len, (const char *)b->reason.bytes);
	w->said_blocked = true;
}

static int lg_on_method(struct lg_worker *w, const amqp_method_t *m)
{
	char reason[320];

	switch (m->id) {
	case AMQP_BASIC_ACK_METHOD: {
		const amqp_basic_ack_t *a = m->decoded;

		return lg_on_confirm(w, a->delivery_tag, a->multiple, true);
	}
	case AMQP_BASIC_NACK_METHOD: {
		const amqp_basic_nack_t *n = m->decoded;

		return lg_on_confirm(w, n->delivery_tag, n->multiple, false);
	}
	case AMQP_BASIC_RETURN_METHOD:
		return lg_on_return(w, m->decoded);
	case AMQP_CONNECTION_BLOCKED_METHOD:
		lg_on_blocked(w, m->decoded);
		return 0;
	case AMQP_CONNECTION_UNBLOCKED_METHOD:
		return 0;
	default:
		lg_describe_close(m, reason, sizeof(reason));
		lg_worker_error(w, "waiting for confirms", reason);
		return -1;
	}
}

/* Reads and handles one frame, waiting up to timeout_ms (0 = don't wait).
 * Returns 1 when a frame was handled, 0 on timeout, -1 on error. */
static int lg_pump(struct lg_worker *w, int timeout_ms)
{
	struct timeval tv = {
		.tv_sec = timeout_ms / 1000,
		.tv_usec = (timeout_ms % 1000) * 1000,
	};
	amqp_frame_t frame;
	int rc = amqp_simple_wait_frame_noblock(w->conn, &frame, &tv);

	if (rc == AMQP_STATUS_TIMEOUT)
		return 0;
	if (rc != AMQP_STATUS_OK) {
		lg_worker_error(w, "waiting for confirms",
				amqp_error_string2(rc));
		return -1;
	}
	if (frame.frame_type == AMQP_FRAME_METHOD &&
	    lg_on_method(w, &frame.payload.method) < 0)
		return -1;
	amqp_maybe_release_buffers(w->conn);
	return 1;
}

/* Handles every frame that can be read without blocking. */
static int lg_pump_ready(struct lg_worker *w)
{
	int rc;

	while ((rc = lg_pump(w, 0)) > 0)
		;
	return rc;
}

static uint64_t lg_in_flight(const struct lg_worker *w)
{
	return w->next_tag - w->low_tag;
}

/* ---- pacing and publishing ---- */

static bool lg_should_stop(const struct lg_worker *w, uint64_t now)
{
	if (atomic_load_explicit(&lg_stop, memory_order_relaxed))
		return true;
	return w->deadline_ns && now >= w->deadline_ns;
}

static void lg_bucket_init(struct lg_bucket *b, double rate, uint64_t now)
{
	b->rate = rate;
	b->burst = rate / 20 > 1 ? rate / 20 : 1; /* 50 ms worth */
	b->tokens = 1;
	b->last_ns = now;
}

/* Takes one token, sleeping until one accrues. False when told to stop. */
static bool lg_bucket_take(struct lg_bucket *b, const struct lg_worker *w)
{
	for (;;) {
		uint64_t now = lg_now_ns();

		if (lg_should_stop(w, now))
			return false;
		if (b->rate <= 0)
			return true;
		b->tokens += (double)(now - b->last_ns) * b->rate / 1e9;
		b->last_ns = now;
		if (b->tokens > b->burst)
			b->tokens = b->burst;
		if (b->tokens >= 1) {
			b->tokens -= 1;
			return true;
		}
		double wait_ns = (1 - b->tokens) / b->rate * 1e9 + 1;
		double cap_ns = (double)LG_POLL_MS * 1e6;

		lg_sleep_ns((uint64_t)(wait_ns < cap_ns ? wait_ns : cap_ns));
	}
}

/* Blocks while the confirm window is full. 1 = stop requested, -1 = error. */
static int lg_wait_window(struct lg_worker *w)
{
	while (lg_in_flight(w) >= w->cfg->confirm_window) {
		if (atomic_load_explicit(&lg_stop, memory_order_relaxed))
			return 1;
		if (lg_pump(w, LG_POLL_MS) < 0)
			return -1;
	}
	return 0;
}

static int lg_publish_one(struct lg_worker *w, uint64_t k)
{
	const struct lg_config *cfg = w->cfg;
	uint64_t seq = w->index + k * cfg->connections;
	const char *queue = cfg->queues[(k + w->index) % cfg->nqueues];
	struct lg_slot *slot = &w->ring[w->next_tag % cfg->confirm_window];
	size_t len = lg_body_render(&w->body, cfg->shape, cfg->size,
				    cfg->seed, seq);
	/* Poison for dead-letter runs: a JSON event without its closing brace. */
	if (cfg->poison_every && seq % cfg->poison_every == cfg->poison_every - 1 && len > 0)
		len--;
	struct timespec now;
	int rc;

	clock_gettime(CLOCK_REALTIME, &now);
	rc = snprintf(w->message_id, sizeof(w->message_id),
		      "%" PRIu64 "-%" PRIu64, cfg->seed, seq);
	w->props.message_id.bytes = w->message_id;
	w->props.message_id.len = (size_t)rc;
	w->props.timestamp = (uint64_t)now.tv_sec;
	w->headers[LG_HDR_SEQ].value.value.i64 = (int64_t)seq;
	w->headers[LG_HDR_PUBLISH_US].value.value.i64 =
		(int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;

	rc = amqp_basic_publish(w->conn, LG_CHANNEL, amqp_empty_bytes,
				amqp_cstring_bytes(queue), 1, 0, &w->props,
				(amqp_bytes_t){ .len = len, .bytes = w->body.data });
	if (rc != AMQP_STATUS_OK) {
		lg_worker_error(w, "basic.publish", amqp_error_string2(rc));
		return -1;
	}
	slot->state = LG_SLOT_PENDING;
	slot->size = (uint32_t)len;
	atomic_store_explicit(&w->sent, w->next_tag, memory_order_relaxed);
	w->next_tag++;
	return 0;
}

static int lg_publish_all(struct lg_worker *w)
{
	struct lg_bucket bucket;

	lg_bucket_init(&bucket, w->cfg->rate / w->cfg->connections, w->start_ns);
	for (uint64_t k = 0; k < w->quota; k++) {
		if (!lg_bucket_take(&bucket, w))
			return 0;
		int rc = lg_wait_window(w);

		if (rc != 0)
			return rc < 0 ? -1 : 0;
		if (lg_publish_one(w, k) < 0)
			return -1;
		if ((k % LG_POLL_EVERY == 0 || amqp_frames_enqueued(w->conn)) &&
		    lg_pump_ready(w) < 0)
			return -1;
	}
	return 0;
}

/* Waits for the remaining confirms: until done, 5 s after a stop request,
 * or (as an error) after 30 s without any progress. */
static int lg_drain(struct lg_worker *w)
{
	uint64_t grace_end = 0, last_change = lg_now_ns();
	uint64_t last_low = w->low_tag;

	while (lg_in_flight(w) > 0) {
		uint64_t now = lg_now_ns();

		if (atomic_load_explicit(&lg_stop, memory_order_relaxed)) {
			if (!grace_end)
				grace_end = now + LG_STOP_GRACE_NS;
			else if (now >= grace_end)
				return 0;
		}
		if (w->low_tag != last_low) {
			last_low = w->low_tag;
			last_change = now;
		} else if (now - last_change >= LG_STALL_NS) {
			lg_worker_error(w, "waiting for confirms",
					"no progress for 30 s");
			return -1;
		}
		if (lg_pump(w, LG_POLL_MS) < 0)
			return -1;
	}
	return 0;
}

static void lg_count_unsettled(struct lg_worker *w)
{
	uint64_t n = 0;

	for (uint64_t t = w->low_tag; t < w->next_tag; t++)
		if (w->ring[t % w->cfg->confirm_window].state != LG_SLOT_FREE)
			n++;
	atomic_store(&w->unconfirmed, n);
}

static void *lg_worker_main(void *arg)
{
	struct lg_worker *w = arg;
	char who[32];
	int rc = lg_publish_all(w);

	if (rc == 0)
		rc = lg_drain(w);
	w->end_ns = lg_now_ns();
	lg_count_unsettled(w);
	if (rc == 0 && lg_in_flight(w) == 0) {
		snprintf(who, sizeof(who), "connection %u", w->index);
		lg_conn_close(w->conn, who);
		w->conn = NULL;
	}
	atomic_store(&w->done, true);
	return NULL;
}

int lg_worker_start(struct lg_worker *w, uint64_t start_ns)
{
	int rc;

	w->start_ns = start_ns;
	if (w->cfg->duration > 0)
		w->deadline_ns = start_ns + (uint64_t)(w->cfg->duration * 1e9);
	rc = pthread_create(&w->thread, NULL, lg_worker_main, w);
	if (rc != 0) {
		lg_error("connection %u: pthread_create: %s", w->index,
			 strerror(rc));
		return -1;
	}
	return 0;
}
