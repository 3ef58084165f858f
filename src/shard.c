/* The shard's loop and the glue between its AMQP connection and its
 * PostgreSQL connection: deliveries stream into the filling batch; a due
 * batch goes to PostgreSQL while the next one fills; after the commit, one
 * basic.ack(multiple) for the batch's last delivery tag.
 *
 * Failures (DESIGN.md, "failure classes"): a lost connection on either side
 * is reconnected with backoff while the other side carries on; a batch that
 * PostgreSQL rejects for its data is loaded again piece by piece in one
 * transaction until the offending rows are isolated, and those become dead
 * letters in the same transaction; a rejected setting stops the shard.
 * Delivery tags belong to one channel: when the AMQP connection goes, the
 * rows it delivered are dropped (and their COPY abandoned if it can still
 * be), never acked; the broker delivers them again. */
#include "shard.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "amqp/conn.h"
#include "backoff.h"
#include "batch.h"
#include "clock.h"
#include "io/loop.h"
#include "log.h"
#include "pg/connect.h"
#include "pg/load.h"
#include "row/copybin.h"
#include "row/dedupe.h"
#include "row/envelope.h"

/* What a completion is for: the low byte of its tag. The rest of the tag
 * is the generation of the connection it belongs to, so completions of a
 * connection already dropped are recognised and ignored. */
enum shard_op {
	OP_MQ_RECV = 1,
	OP_MQ_SEND,
	OP_PG_READABLE,
	OP_PG_WRITABLE,
	OP_WAKE,
};
#define TAG(op, gen) ((uint64_t)(gen) << 8 | (op))

enum shard_phase {
	SHARD_RUN,   /* consuming */
	SHARD_DRAIN, /* consumer cancelled: commit and ack what we hold, then close */
	SHARD_DONE,  /* leave the loop */
};

enum pg_link {
	PGL_DOWN,	/* no connection; the next attempt at pg_bo.retry_ms */
	PGL_CONNECTING, /* PQconnectPoll in progress */
	PGL_SETUP,	/* running the plan's per-connection setup */
	PGL_READY,
};

#define SHARD_DEPTH_POLL_MS 1000
/* The most a filling batch waits for in the socket before it reads. */
#define SHARD_HOLD_MAX_BYTES (64 * 1024)
/* --until-empty: quiet this long before asking whether the queue is empty. */
#define SHARD_IDLE_PROBE_MS 200

struct shard {
	int id;
	char name[32];
	const struct config *cfg;
	const struct sql_plan *plan;
	pthread_t thread;
	int wake_fd;
	_Atomic bool stop_requested;
	_Atomic bool finished;
	int exit_code;
	struct shard_stats stats;

	struct loop *loop;

	struct mq mq;
	uint32_t mq_gen;
	struct backoff mq_bo;

	PGconn *pg;
	enum pg_link pg_link;
	uint32_t pg_gen;
	struct backoff pg_bo;
	PostgresPollingStatusType pg_polling;
	int64_t pg_deadline_ms; /* connection attempt */
	struct loader ld;
	bool pg_in_armed, pg_out_armed, wake_armed;

	struct batch batch[2];
	struct batch *filling;
	struct batch *flushing; /* handed to PostgreSQL, or waiting for it */
	struct dedupe dd;
	bool in_row;	  /* a message's row is partly written */
	bool row_skip;	  /* its body is too large to keep */
	size_t row_at;	  /* where it starts in filling->data */
	uint64_t row_tag;

	enum shard_phase phase;
	int64_t now_ms;
	int64_t mq_deadline_ms; /* next heartbeat send or check */
	int64_t drain_deadline_ms;
	int64_t last_delivery_ms;
	int64_t next_depth_ms;
	uint64_t deliveries_at_probe; /* --until-empty: deliveries seen when asked */
	uint64_t deliveries;
};

static bool mq_up(const struct shard *s) { return s->mq.fd >= 0; }

/* ---- deliveries -> rows (mq_handler) ------------------------------------ */

static uint16_t shard_ncols(const struct shard *s)
{
	return ENV_NCOLS + (s->cfg->dedupe != DEDUPE_NONE);
}

static void on_deliver(void *ctx, const amqp_basic_deliver_t *d)
{
	struct shard *s = ctx;
	s->in_row = true;
	s->row_skip = false;
	s->row_tag = d->delivery_tag;
	s->row_at = s->filling->data.len;
	env_row_begin(&s->filling->data, shard_ncols(s), d->exchange, d->routing_key);
}

static void on_header(void *ctx, const amqp_basic_properties_t *p, uint64_t body_size)
{
	struct shard *s = ctx;
	s->row_skip = !env_row_props(&s->filling->data, p, body_size,
				     (enum body_type)s->cfg->body_type, clock_wall_us());
	dedupe_props(&s->dd, p);
}

static void on_body(void *ctx, const void *bytes, size_t len)
{
	struct shard *s = ctx;
	if (!s->row_skip)
		buf_put(&s->filling->data, bytes, len);
	dedupe_body(&s->dd, bytes, len);
}

static void on_message_end(void *ctx)
{
	struct shard *s = ctx;
	struct batch *b = s->filling;
	const char *why = NULL, *state = NULL;
	char big[128];

	if (s->row_skip) {
		snprintf(big, sizeof(big), "the body is larger than PostgreSQL's field limit "
					   "(%llu bytes); it is not kept",
			 (unsigned long long)ENV_BODY_MAX);
		why = big, state = "54000"; /* program_limit_exceeded */
	} else if (s->cfg->dedupe != DEDUPE_NONE && !dedupe_write(&s->dd, &b->data)) {
		why = s->dd.why, state = "23502"; /* not_null_violation: no key */
	}
	if (batch_msgs(b) == 0)
		b->first_ms = s->now_ms;
	if (why) {
		/* Rejected before PostgreSQL: the row leaves the batch. */
		if (s->cfg->dedupe != DEDUPE_NONE)
			cbin_null(&b->data); /* complete the tuple for dl_row */
		batch_add_dead(b, s->cfg, s->row_tag, b->data.data + s->row_at,
			       b->data.len - s->row_at, state, why);
		b->data.len = s->row_at;
	} else {
		batch_add_row(b, s->row_at, s->row_tag);
	}
	b->last_tag = s->row_tag;
	s->in_row = false;
	s->deliveries++;
	s->last_delivery_ms = s->now_ms;
}

static void on_depth(void *ctx, uint32_t ready)
{
	struct shard *s = ctx;
	atomic_store_explicit(&s->stats.ready, ready, memory_order_relaxed);
	if (!s->cfg->until_empty || s->phase != SHARD_RUN || ready != 0)
		return;
	/* Empty, and nothing arrived since we asked: we hold the rest. */
	if (s->deliveries == s->deliveries_at_probe && !s->in_row && !s->flushing &&
	    batch_msgs(s->filling) == 0) {
		log_info("queue '%s' is empty; stopping (--until-empty)", s->cfg->queue);
		atomic_store(&s->stop_requested, true);
	}
}

/* ---- failure -------------------------------------------------------------- */

/* Leave the loop for good: the broker requeues whatever we did not ack. */
static void shard_fail(struct shard *s)
{
	s->exit_code = 1;
	s->phase = SHARD_DONE;
}

/* A connection failed and will be retried: log when the reason is new. */
static void link_retry(struct shard *s, struct backoff *bo, const char *who, const char *why)
{
	bool news = backoff_failed(bo, s->now_ms, why);
	if (news)
		log_warn("%s: %s; retrying in %lld ms, then with backoff up to %d s", who, why,
			 (long long)(bo->retry_ms - s->now_ms), BACKOFF_CAP_MS / 1000);
	else
		log_debug("%s: %s (attempt %d)", who, why, bo->attempts);
}

static void link_up(struct shard *s, struct backoff *bo, const char *who)
{
	int64_t since = bo->since_ms;
	int n = backoff_succeeded(bo);
	if (n > 0)
		log_info("%s: connected again after %d failed attempts in %.1f s", who, n,
			 (double)(s->now_ms - since) / 1000);
}

/* ---- PostgreSQL ------------------------------------------------------------ */

static void pg_drop(struct shard *s)
{
	if (s->pg) {
		int fd = PQsocket(s->pg);
		if (fd >= 0)
			loop_cancel(s->loop, fd);
		PQfinish(s->pg);
	}
	s->pg = NULL;
	s->pg_link = PGL_DOWN;
	s->pg_gen++;
	s->pg_in_armed = s->pg_out_armed = false;
	load_attach(&s->ld, NULL);
}

/* The connection is lost or unusable for a transient reason: the batch
 * stays and goes again, whole, on the next connection (its transaction
 * did not commit, or we cannot know; --dedupe-key makes that harmless). */
static void pg_lost(struct shard *s, const char *why)
{
	pg_drop(s);
	link_retry(s, &s->pg_bo, "PostgreSQL", why);
}

/* A connection attempt failed: retry, unless the server refused a setting. */
static void pg_connect_failed(struct shard *s)
{
	char why[512];
	enum pg_class cls = pg_connect_error(s->pg, why, sizeof(why));
	if (cls != PG_CONFIG) {
		pg_lost(s, why);
		return;
	}
	log_error("PostgreSQL: %s (POSTGRES_DSN)", why);
	pg_drop(s);
	shard_fail(s);
}

static void pg_connect_begin(struct shard *s)
{
	s->pg = pg_connect_start(s->cfg);
	if (!s->pg || PQstatus(s->pg) == CONNECTION_BAD) {
		pg_connect_failed(s);
		return;
	}
	s->pg_link = PGL_CONNECTING;
	s->pg_polling = PGRES_POLLING_WRITING;
	s->pg_deadline_ms = s->now_ms + PG_CONNECT_TIMEOUT_MS;
}

static void shard_load_done(struct shard *s, enum load_result r);

static void pg_connected(struct shard *s)
{
	PQsetErrorVerbosity(s->pg, PQERRORS_DEFAULT);
	if (PQsetnonblocking(s->pg, 1) != 0) {
		pg_lost(s, "cannot enter non-blocking mode");
		return;
	}
	load_attach(&s->ld, s->pg);
	s->pg_link = PGL_SETUP;
	shard_load_done(s, load_setup(&s->ld));
}

static void pg_connect_step(struct shard *s)
{
	s->pg_polling = PQconnectPoll(s->pg);
	if (s->pg_polling == PGRES_POLLING_OK)
		pg_connected(s);
	else if (s->pg_polling == PGRES_POLLING_FAILED)
		pg_connect_failed(s);
}

/* ---- loading batches ------------------------------------------------------- */

static void shard_committed(struct shard *s)
{
	struct batch *b = s->flushing;
	if (s->cfg->dead_letter == DEAD_LETTER_REJECT) {
		for (uint32_t k = 0; k < b->ndead; k++)
			mq_reject(&s->mq, b->dead_tags[k]);
		uint64_t tag = batch_ack_tag(b);
		if (tag)
			mq_ack(&s->mq, tag);
	} else {
		mq_ack(&s->mq, b->last_tag);
	}
	uint32_t loaded = load_loaded(&s->ld);
	atomic_fetch_add_explicit(&s->stats.rows, loaded, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->stats.dead, b->ndead, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->stats.batches, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->stats.bytes, b->data.len, memory_order_relaxed);
	log_debug("committed %u rows, acked up to tag %llu", loaded,
		  (unsigned long long)b->last_tag);
	batch_reset(b);
	s->flushing = NULL;
}

/* The flushing batch's channel is gone: whatever its load did, the broker
 * delivers its messages again. An isolation's open transaction is ended by
 * closing the connection. */
static void shard_drop_orphan(struct shard *s)
{
	if (load_in_transaction(&s->ld) || s->ld.pgc.state == PGC_BROKEN)
		pg_drop(s);
	batch_reset(s->flushing);
	s->flushing = NULL;
}

static void shard_load_done(struct shard *s, enum load_result r)
{
	char why[600];
	switch (r) {
	case LOAD_PENDING:
		return;
	case LOAD_RETRY:
		pg_lost(s, load_error(&s->ld, why, sizeof(why)));
		return;
	case LOAD_FATAL:
		shard_fail(s);
		return;
	case LOAD_DONE:
		break;
	}
	if (s->pg_link == PGL_SETUP) {
		s->pg_link = PGL_READY;
		link_up(s, &s->pg_bo, "PostgreSQL");
	} else if (s->flushing->orphan) {
		shard_drop_orphan(s);
	} else {
		shard_committed(s);
	}
}

static bool batch_due(const struct shard *s, const struct batch *b)
{
	const struct config *c = s->cfg;
	return b->nrows >= (uint32_t)c->batch_rows || b->data.len >= (size_t)c->batch_bytes ||
	       s->now_ms - b->first_ms >= c->linger_ms || s->phase == SHARD_DRAIN;
}

/* A filling batch that is not due needs no delivery before its linger
 * deadline, unless enough arrive to fill it: sleep until then, not for
 * each delivery (mq_hold). Publish-to-commit latency is unchanged (the
 * rows would wait for the deadline in the batch anyway); wake-ups drop
 * tenfold at moderate rates (PERF.md, bench/ab.py). */
static void shard_hold(struct shard *s)
{
	const struct batch *b = s->filling;
	uint32_t n = batch_msgs(b);
	if (!mq_up(s) || s->phase != SHARD_RUN || n == 0 || batch_due(s, b)) {
		mq_hold(&s->mq, 1, 0);
		return;
	}
	size_t per_row = b->data.len / n + 1;
	size_t rows_left = (size_t)s->cfg->batch_rows - b->nrows;
	size_t want = (size_t)s->cfg->batch_bytes - b->data.len;
	want = rows_left * per_row < want ? rows_left * per_row : want;
	want = want < SHARD_HOLD_MAX_BYTES ? want : SHARD_HOLD_MAX_BYTES;
	mq_hold(&s->mq, (int)want, b->first_ms + s->cfg->linger_ms);
}

static void shard_maybe_flush(struct shard *s)
{
	struct batch *b = s->filling;
	if (!s->flushing && !s->in_row && batch_msgs(b) > 0 && batch_due(s, b)) {
		/* Held deliveries waiting in the socket belong in this batch:
		 * read them first (next turn). */
		if (mq_up(s) && mq_unhold(&s->mq))
			return;
		s->flushing = b;
		s->filling = b == &s->batch[0] ? &s->batch[1] : &s->batch[0];
	}
	if (!s->flushing || load_busy(&s->ld))
		return;
	if (s->flushing->orphan)
		shard_drop_orphan(s);
	else if (s->pg_link == PGL_READY)
		shard_load_done(s, load_start(&s->ld, s->flushing));
}

/* ---- RabbitMQ ------------------------------------------------------------- */

static void mq_connect(struct shard *s)
{
	s->mq_gen++;
	const struct mq_params p = {
		.url = &s->cfg->amqp,
		.queue = s->cfg->queue,
		.prefetch = (uint16_t)s->cfg->prefetch,
		.connection_name = s->name,
		.tag_recv = TAG(OP_MQ_RECV, s->mq_gen),
		.tag_send = TAG(OP_MQ_SEND, s->mq_gen),
	};
	const struct mq_handler h = {
		.ctx = s,
		.deliver = on_deliver,
		.header = on_header,
		.body = on_body,
		.message_end = on_message_end,
		.depth = on_depth,
	};
	if (!mq_open(&s->mq, &p, &h)) {
		mq_disconnect(&s->mq, s->loop);
		link_retry(s, &s->mq_bo, "RabbitMQ", s->mq.reason);
	}
}

/* The connection failed or closed under us: its deliveries are the
 * broker's again. */
static void mq_lost(struct shard *s)
{
	char why[sizeof(s->mq.reason)];
	snprintf(why, sizeof(why), "%s", s->mq.reason[0] ? s->mq.reason : "connection closed");
	bool config = s->mq.config_error;
	mq_disconnect(&s->mq, s->loop);
	atomic_store_explicit(&s->stats.consuming, false, memory_order_relaxed);

	batch_reset(s->filling);
	s->in_row = false;
	if (s->flushing) {
		s->flushing->orphan = true;
		if (load_busy(&s->ld))
			load_abandon(&s->ld); /* if its data is still going out, nothing commits */
	}
	if (config) {
		log_error("RabbitMQ: %s", why);
		shard_fail(s);
	} else if (s->phase == SHARD_DRAIN) {
		log_warn("RabbitMQ: %s while draining; what was not acked will be redelivered",
			 why);
		s->phase = SHARD_DONE;
	} else {
		link_retry(s, &s->mq_bo, "RabbitMQ", why);
	}
}

/* ---- the loop ----------------------------------------------------------- */

static void shard_begin_drain(struct shard *s)
{
	if (s->phase != SHARD_RUN)
		return;
	s->phase = SHARD_DRAIN;
	s->drain_deadline_ms = s->now_ms + s->cfg->drain_timeout_s * 1000;
	if (!mq_up(s))
		s->phase = SHARD_DONE; /* nothing we hold can be acked */
	else if (s->mq.state == MQ_CONSUMING)
		mq_cancel(&s->mq);
	else
		mq_close(&s->mq, "shutdown"); /* still in the handshake */
}

/* The connections' state changes that are decided between turns. */
static void shard_links(struct shard *s)
{
	if (mq_up(s)) {
		if (s->mq.state == MQ_CONSUMING)
			link_up(s, &s->mq_bo, "RabbitMQ");
		if (s->phase == SHARD_RUN && s->mq.state == MQ_CANCELLED) {
			/* The broker cancelled us (queue deleted, node down): start
			 * over; consuming again says whether the queue is there. */
			mq_close(&s->mq, "consumer cancelled by the broker");
		}
		if (s->mq.state == MQ_FAILED || (s->mq.state == MQ_CLOSED && s->phase == SHARD_RUN))
			mq_lost(s);
	} else if (s->phase == SHARD_RUN && s->now_ms >= s->mq_bo.retry_ms) {
		mq_connect(s);
	}
	if (s->phase != SHARD_DONE && s->pg_link == PGL_DOWN && s->now_ms >= s->pg_bo.retry_ms)
		pg_connect_begin(s);
}

/* Per turn, before waiting: reconnect, flush a due batch, finish a drain,
 * decide on backpressure, hand queued frames to the kernel and arm polls. */
static bool shard_before_sleep(struct shard *s)
{
	if (atomic_load_explicit(&s->stop_requested, memory_order_relaxed))
		shard_begin_drain(s);
	shard_links(s);
	if (s->phase == SHARD_DONE)
		return false;
	shard_maybe_flush(s);
	shard_hold(s);
	if (mq_up(s))
		s->mq_deadline_ms = mq_tick(&s->mq, s->now_ms);

	if (s->phase == SHARD_DRAIN && mq_up(s) && s->mq.state == MQ_CANCELLED &&
	    !s->flushing && !s->in_row && batch_msgs(s->filling) == 0)
		mq_close(&s->mq, "shutdown");
	if (s->phase == SHARD_DRAIN && mq_up(s) && s->mq.state == MQ_CLOSED)
		s->phase = SHARD_DONE;
	if (mq_up(s) && s->mq.state == MQ_FAILED)
		mq_lost(s);
	atomic_store_explicit(&s->stats.consuming, mq_up(s) && s->mq.state == MQ_CONSUMING,
			      memory_order_relaxed);
	if (s->phase == SHARD_DONE)
		return false;

	/* Backpressure: while a batch waits for PostgreSQL, stop reading
	 * deliveries once the next batch holds two batches' worth of bytes
	 * (only between rows, so one message larger than that completes). */
	s->mq.recv_paused = s->flushing && !s->in_row &&
			    s->filling->data.len >= 2 * (size_t)s->cfg->batch_bytes;

	int rc = mq_up(s) ? mq_pump(&s->mq, s->loop, s->now_ms) : 0;
	unsigned want = 0;
	if (s->pg_link == PGL_CONNECTING)
		want = s->pg_polling == PGRES_POLLING_READING ? POLLIN : POLLOUT;
	else if (s->pg_link != PGL_DOWN)
		want = load_want(&s->ld);
	int fd = s->pg ? PQsocket(s->pg) : -1;
	if (rc == 0 && fd >= 0 && (want & POLLIN) && !s->pg_in_armed) {
		rc = loop_poll(s->loop, fd, POLLIN, TAG(OP_PG_READABLE, s->pg_gen));
		s->pg_in_armed = rc == 0;
	}
	if (rc == 0 && fd >= 0 && (want & POLLOUT) && !s->pg_out_armed) {
		rc = loop_poll(s->loop, fd, POLLOUT, TAG(OP_PG_WRITABLE, s->pg_gen));
		s->pg_out_armed = rc == 0;
	}
	if (rc == 0 && !s->wake_armed) {
		rc = loop_poll(s->loop, s->wake_fd, POLLIN, OP_WAKE);
		s->wake_armed = rc == 0;
	}
	if (rc < 0) {
		log_error("cannot queue I/O: %s", strerror(-rc));
		shard_fail(s);
		return false;
	}
	return true;
}

static int64_t earliest(int64_t a, int64_t b) { return a < b ? a : b; }

/* The nearest deadline: heartbeats, linger, drain, depth polls, retries. */
static int shard_timeout_ms(struct shard *s)
{
	int64_t next = mq_up(s) ? s->mq_deadline_ms : s->mq_bo.retry_ms;
	if (batch_msgs(s->filling) && !s->flushing)
		next = earliest(next, s->filling->first_ms + s->cfg->linger_ms);
	if (s->phase == SHARD_DRAIN)
		next = earliest(next, s->drain_deadline_ms);
	if (s->pg_link == PGL_DOWN)
		next = earliest(next, s->pg_bo.retry_ms);
	if (s->pg_link == PGL_CONNECTING)
		next = earliest(next, s->pg_deadline_ms);
	next = earliest(next, s->next_depth_ms);
	int64_t t = next - s->now_ms;
	return t < 0 ? 0 : t > 1000 ? 1000 : (int)t;
}

static void shard_timers(struct shard *s)
{
	if (s->phase == SHARD_DRAIN && s->now_ms >= s->drain_deadline_ms) {
		log_warn("drain timed out after %ld s; unacked messages will be redelivered",
			 s->cfg->drain_timeout_s);
		shard_fail(s);
		return;
	}
	if (s->pg_link == PGL_CONNECTING && s->now_ms >= s->pg_deadline_ms) {
		char why[64];
		snprintf(why, sizeof(why), "no answer to connecting in %d s",
			 PG_CONNECT_TIMEOUT_MS / 1000);
		pg_lost(s, why);
	}
	if (s->now_ms < s->next_depth_ms || !mq_up(s) || s->mq.state != MQ_CONSUMING)
		return;
	bool quiet = s->now_ms - s->last_delivery_ms >= SHARD_IDLE_PROBE_MS;
	if (s->cfg->stats_interval_s > 0 || (s->cfg->until_empty && quiet)) {
		s->deliveries_at_probe = s->deliveries;
		mq_request_depth(&s->mq);
	}
	s->next_depth_ms = s->now_ms + (s->cfg->until_empty ? SHARD_IDLE_PROBE_MS
							    : SHARD_DEPTH_POLL_MS);
}

static void shard_pg_ready(struct shard *s)
{
	if (s->pg_link == PGL_CONNECTING)
		pg_connect_step(s);
	else if (load_busy(&s->ld))
		shard_load_done(s, load_step(&s->ld));
}

static void shard_dispatch(struct shard *s, const struct loop_completion *c)
{
	enum shard_op op = (enum shard_op)(c->tag & 0xff);
	uint32_t gen = (uint32_t)(c->tag >> 8);
	switch (op) {
	case OP_MQ_RECV:
	case OP_MQ_SEND:
		if (gen != s->mq_gen || !mq_up(s))
			return; /* from a connection already dropped */
		if (op == OP_MQ_RECV ? !mq_on_recv(&s->mq, c->res, s->now_ms)
				     : !mq_on_send(&s->mq, c->res))
			mq_lost(s);
		return;
	case OP_PG_READABLE:
	case OP_PG_WRITABLE:
		if (gen != s->pg_gen)
			return;
		if (op == OP_PG_READABLE)
			s->pg_in_armed = false;
		else
			s->pg_out_armed = false;
		shard_pg_ready(s);
		return;
	case OP_WAKE: {
		uint64_t v;
		s->wake_armed = false;
		if (read(s->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			log_warn("eventfd read: %s", strerror(errno));
		return;
	}
	}
	log_error("internal error: completion with unknown tag %llu",
		  (unsigned long long)c->tag);
	abort();
}

static void shard_run(struct shard *s)
{
	struct loop_completion done[64];
	s->now_ms = clock_mono_ms();
	s->next_depth_ms = s->now_ms + SHARD_DEPTH_POLL_MS;
	while (shard_before_sleep(s)) {
		int n = loop_wait(s->loop, done, 64, shard_timeout_ms(s));
		s->now_ms = clock_mono_ms();
		if (n < 0) {
			log_error("event loop wait failed: %s", strerror(-n));
			shard_fail(s);
			break;
		}
		for (int i = 0; i < n && s->phase != SHARD_DONE; i++)
			shard_dispatch(s, &done[i]);
		if (s->phase != SHARD_DONE)
			shard_timers(s);
	}
}

/* ---- setup and teardown -------------------------------------------------- */

static void shard_pin(struct shard *s)
{
	cpu_set_t allowed, one;
	if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
		return;
	int n = CPU_COUNT(&allowed), want = s->id % n;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &allowed) || want--)
			continue;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0)
			log_warn("cannot pin to CPU %d", cpu);
		return;
	}
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;
	char why[256];

	log_set_context(s->name);
	shard_pin(s);
	s->loop = loop_open((enum loop_choice)s->cfg->io, why, sizeof(why));
	if (!s->loop) {
		log_error("cannot set up the event loop: %s (SLUICE_IO)", why);
		goto out;
	}
	if (s->id == 0 && why[0])
		log_warn("io_uring is unavailable (%s); running on epoll. In a container, "
			 "allow io_uring_setup, io_uring_enter and io_uring_register in the "
			 "seccomp profile; on a host, check sysctl kernel.io_uring_disabled",
			 why);
	if (s->id == 0)
		log_info("I/O backend: %s", s->loop->be->name);
	if (!dedupe_init(&s->dd, s->cfg)) {
		log_error("out of memory");
		goto out;
	}
	unsigned seed = (unsigned)clock_wall_us() ^ (unsigned)s->id * 0x9e3779b9u;
	backoff_init(&s->mq_bo, seed);
	backoff_init(&s->pg_bo, seed * 31 + 7);
	s->mq.fd = -1;
	load_init(&s->ld, s->cfg, s->plan);
	s->filling = &s->batch[0];
	s->exit_code = 0;
	shard_run(s);
	if (s->exit_code == 0)
		log_debug("closed cleanly");
out:
	if (s->loop && mq_up(s))
		mq_disconnect(&s->mq, s->loop);
	if (s->loop)
		pg_drop(s);
	/* Buffers go after the loop: the kernel is done with them then. */
	loop_destroy(s->loop);
	s->loop = NULL;
	mq_free(&s->mq);
	batch_free(&s->batch[0]);
	batch_free(&s->batch[1]);
	load_free(&s->ld);
	dedupe_free(&s->dd);
	atomic_store(&s->stats.consuming, false);
	atomic_store(&s->finished, true);
	/* Wake the main thread, which waits for signals. */
	kill(getpid(), SIGUSR1);
	return NULL;
}

struct shard *shard_start(int id, const struct config *cfg, const struct sql_plan *plan)
{
	struct shard *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->id = id;
	s->cfg = cfg;
	s->plan = plan;
	s->exit_code = 1; /* until the loop runs */
	snprintf(s->name, sizeof(s->name), "shard %d", id);
	atomic_init(&s->stats.ready, -1);
	s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->wake_fd < 0 || pthread_create(&s->thread, NULL, shard_main, s) != 0) {
		log_error("cannot start shard %d: %s", id, strerror(errno));
		if (s->wake_fd >= 0)
			close(s->wake_fd);
		free(s);
		return NULL;
	}
	return s;
}

void shard_stop(struct shard *s)
{
	uint64_t one = 1;
	atomic_store(&s->stop_requested, true);
	if (write(s->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("cannot wake shard %d: %s", s->id, strerror(errno));
}

bool shard_finished(const struct shard *s) { return atomic_load(&s->finished); }

int shard_join(struct shard *s)
{
	pthread_join(s->thread, NULL);
	int rc = s->exit_code;
	close(s->wake_fd);
	free(s);
	return rc;
}

const struct shard_stats *shard_stats(const struct shard *s) { return &s->stats; }
