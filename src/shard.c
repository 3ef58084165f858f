/* The shard's loop and the glue between its AMQP connection and its COPY
 * state machine: deliveries stream into the filling batch; a due batch goes
 * to PostgreSQL while the next one fills; after the commit, one
 * basic.ack(multiple) for the batch's last delivery tag. */
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
#include "clock.h"
#include "io/loop.h"
#include "log.h"
#include "pg/connect.h"
#include "pg/copy.h"
#include "row/copybin.h"
#include "row/envelope.h"

/* What a completion is for; the loop tag carries it. */
enum shard_op {
	OP_MQ_RECV = 1,
	OP_MQ_SEND,
	OP_PG_READABLE,
	OP_PG_WRITABLE,
	OP_WAKE,
};

enum shard_phase {
	SHARD_RUN,   /* consuming */
	SHARD_DRAIN, /* consumer cancelled: commit and ack what we hold, then close */
	SHARD_DONE,  /* connection closed or failed: leave the loop */
};

#define SHARD_DEPTH_POLL_MS 1000
/* --until-empty: quiet this long before asking whether the queue is empty. */
#define SHARD_IDLE_PROBE_MS 200

struct shard {
	int id;
	char name[32];
	const struct config *cfg;
	const char *copy_sql;
	pthread_t thread;
	int wake_fd;
	_Atomic bool stop_requested;
	_Atomic bool finished;
	int exit_code;
	struct shard_stats stats;

	struct loop *loop;
	struct mq mq;
	PGconn *pg;
	struct pgc pgc;
	struct batch batch[2];
	struct batch *filling;
	struct batch *flushing; /* in the COPY, or NULL */
	bool in_row;		/* a message's row is partly written */
	uint64_t row_tag;
	bool pg_in_armed, pg_out_armed, wake_armed;

	enum shard_phase phase;
	int64_t now_ms;
	int64_t mq_deadline_ms; /* next heartbeat send or check */
	int64_t drain_deadline_ms;
	int64_t last_delivery_ms;
	int64_t next_depth_ms;
	uint64_t deliveries_at_probe; /* --until-empty: deliveries seen when asked */
	uint64_t deliveries;
};

static void batch_reset(struct batch *b)
{
	buf_reset(&b->data);
	cbin_header(&b->data);
	b->rows = 0;
	b->last_tag = 0;
}

/* Leave the loop for good: the broker requeues whatever we did not ack. */
static void shard_fail(struct shard *s)
{
	s->exit_code = 1;
	s->phase = SHARD_DONE;
}

/* ---- deliveries -> rows (mq_handler) ------------------------------------ */

static void on_deliver(void *ctx, const amqp_basic_deliver_t *d)
{
	struct shard *s = ctx;
	s->in_row = true;
	s->row_tag = d->delivery_tag;
	env_row_begin(&s->filling->data, d->exchange, d->routing_key);
}

static void on_header(void *ctx, const amqp_basic_properties_t *p, uint64_t body_size)
{
	struct shard *s = ctx;
	env_row_props(&s->filling->data, p, body_size, (enum body_type)s->cfg->body_type,
		      clock_wall_us());
}

static void on_body(void *ctx, const void *bytes, size_t len)
{
	struct shard *s = ctx;
	buf_put(&s->filling->data, bytes, len);
}

static void on_message_end(void *ctx)
{
	struct shard *s = ctx;
	struct batch *b = s->filling;
	if (b->rows++ == 0)
		b->first_ms = s->now_ms;
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
	    s->filling->rows == 0) {
		log_info("queue '%s' is empty; stopping (--until-empty)", s->cfg->queue);
		atomic_store(&s->stop_requested, true);
	}
}

/* ---- COPY --------------------------------------------------------------- */

static void shard_committed(struct shard *s)
{
	struct batch *b = s->flushing;
	mq_ack(&s->mq, b->last_tag);
	atomic_fetch_add_explicit(&s->stats.rows, b->rows, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->stats.batches, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->stats.bytes, b->data.len, memory_order_relaxed);
	log_debug("committed %u rows, acked up to tag %llu", b->rows,
		  (unsigned long long)b->last_tag);
	batch_reset(b);
	s->flushing = NULL;
}

static void shard_pg_progress(struct shard *s, enum pgc_progress r)
{
	switch (r) {
	case PGC_PENDING:
		return;
	case PGC_COMMITTED:
		shard_committed(s);
		return;
	case PGC_FAILED:
		log_error("PostgreSQL: COPY of %u rows into %s failed: %s (SQLSTATE %s); "
			  "the batch stays unacked and will be redelivered",
			  s->flushing->rows, s->cfg->table, s->pgc.error, s->pgc.sqlstate);
		shard_fail(s);
		return;
	}
}

static bool batch_due(const struct shard *s, const struct batch *b)
{
	const struct config *c = s->cfg;
	return b->rows >= (uint32_t)c->batch_rows || b->data.len >= (size_t)c->batch_bytes ||
	       s->now_ms - b->first_ms >= c->linger_ms || s->phase == SHARD_DRAIN;
}

static void shard_maybe_flush(struct shard *s)
{
	struct batch *b = s->filling;
	if (s->flushing || s->in_row || b->rows == 0 || !batch_due(s, b))
		return;
	s->flushing = b;
	s->filling = b == &s->batch[0] ? &s->batch[1] : &s->batch[0];
	shard_pg_progress(s, pgc_start(&s->pgc, b));
}

/* ---- the loop ----------------------------------------------------------- */

static void shard_begin_drain(struct shard *s)
{
	if (s->phase != SHARD_RUN)
		return;
	s->phase = SHARD_DRAIN;
	s->drain_deadline_ms = s->now_ms + s->cfg->drain_timeout_s * 1000;
	if (s->mq.state == MQ_CONSUMING)
		mq_cancel(&s->mq);
	else
		mq_close(&s->mq, "shutdown"); /* still in the handshake */
}

/* Per turn, before waiting: flush a due batch, finish a drain, decide on
 * backpressure, hand queued frames to the kernel and arm the polls. */
static bool shard_before_sleep(struct shard *s)
{
	if (atomic_load_explicit(&s->stop_requested, memory_order_relaxed))
		shard_begin_drain(s);
	shard_maybe_flush(s);
	s->mq_deadline_ms = mq_tick(&s->mq, s->now_ms);

	if (s->phase == SHARD_DRAIN && s->mq.state == MQ_CANCELLED && !s->flushing &&
	    !s->in_row && s->filling->rows == 0)
		mq_close(&s->mq, "shutdown");
	if (s->mq.state == MQ_CLOSED)
		s->phase = SHARD_DONE;
	if (s->phase == SHARD_RUN && s->mq.state == MQ_CANCELLED) {
		log_error("RabbitMQ: %s; stopping", s->mq.reason);
		s->exit_code = 1;
		shard_begin_drain(s);
	}
	if (s->mq.state == MQ_FAILED || s->pgc.state == PGC_BROKEN)
		shard_fail(s);
	atomic_store_explicit(&s->stats.consuming, s->mq.state == MQ_CONSUMING,
			      memory_order_relaxed);
	if (s->phase == SHARD_DONE)
		return false;

	/* Backpressure: while a COPY is running, stop reading deliveries once
	 * the next batch holds two batches' worth of bytes (only between rows,
	 * so one message larger than that still completes). */
	s->mq.recv_paused = s->flushing && !s->in_row &&
			    s->filling->data.len >= 2 * (size_t)s->cfg->batch_bytes;

	int rc = mq_pump(&s->mq, s->loop, s->now_ms);
	int fd = PQsocket(s->pg);
	if (rc == 0 && (s->pgc.want & POLLIN) && !s->pg_in_armed) {
		rc = loop_poll(s->loop, fd, POLLIN, OP_PG_READABLE);
		s->pg_in_armed = rc == 0;
	}
	if (rc == 0 && (s->pgc.want & POLLOUT) && !s->pg_out_armed) {
		rc = loop_poll(s->loop, fd, POLLOUT, OP_PG_WRITABLE);
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

/* The nearest deadline: heartbeats, linger, drain, depth polls. */
static int shard_timeout_ms(struct shard *s)
{
	int64_t next = s->mq_deadline_ms;
	if (s->filling->rows && !s->flushing) {
		int64_t linger = s->filling->first_ms + s->cfg->linger_ms;
		next = linger < next ? linger : next;
	}
	if (s->phase == SHARD_DRAIN && s->drain_deadline_ms < next)
		next = s->drain_deadline_ms;
	if (s->next_depth_ms < next)
		next = s->next_depth_ms;
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
	if (s->now_ms < s->next_depth_ms || s->mq.state != MQ_CONSUMING)
		return;
	bool quiet = s->now_ms - s->last_delivery_ms >= SHARD_IDLE_PROBE_MS;
	if (s->cfg->stats_interval_s > 0 || (s->cfg->until_empty && quiet)) {
		s->deliveries_at_probe = s->deliveries;
		mq_request_depth(&s->mq);
	}
	s->next_depth_ms = s->now_ms + (s->cfg->until_empty ? SHARD_IDLE_PROBE_MS
							    : SHARD_DEPTH_POLL_MS);
}

static void shard_dispatch(struct shard *s, const struct loop_completion *c)
{
	switch ((enum shard_op)c->tag) {
	case OP_MQ_RECV:
		if (!mq_on_recv(&s->mq, c->res, s->now_ms))
			shard_fail(s);
		break;
	case OP_MQ_SEND:
		if (!mq_on_send(&s->mq, c->res))
			shard_fail(s);
		break;
	case OP_PG_READABLE:
	case OP_PG_WRITABLE:
		if (c->tag == OP_PG_READABLE)
			s->pg_in_armed = false;
		else
			s->pg_out_armed = false;
		if (s->flushing)
			shard_pg_progress(s, pgc_step(&s->pgc));
		break;
	case OP_WAKE: {
		uint64_t v;
		s->wake_armed = false;
		if (read(s->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			log_warn("eventfd read: %s", strerror(errno));
		break;
	}
	default:
		log_error("internal error: completion with unknown tag %llu",
			  (unsigned long long)c->tag);
		abort();
	}
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
	s->pg = pg_connect(s->cfg);
	if (!s->pg)
		goto out;
	if (PQsetnonblocking(s->pg, 1) != 0) {
		log_error("PostgreSQL: cannot enter non-blocking mode: %s", PQerrorMessage(s->pg));
		goto out;
	}
	pgc_init(&s->pgc, s->pg, s->copy_sql);
	batch_reset(&s->batch[0]);
	batch_reset(&s->batch[1]);
	s->filling = &s->batch[0];

	const struct mq_params p = {
		.url = &s->cfg->amqp,
		.queue = s->cfg->queue,
		.prefetch = (uint16_t)s->cfg->prefetch,
		.connection_name = s->name,
		.tag_recv = OP_MQ_RECV,
		.tag_send = OP_MQ_SEND,
	};
	const struct mq_handler h = {
		.ctx = s,
		.deliver = on_deliver,
		.header = on_header,
		.body = on_body,
		.message_end = on_message_end,
		.depth = on_depth,
	};
	if (!mq_open(&s->mq, &p, &h))
		goto out;
	if (s->id == 0)
		log_info("I/O backend: %s", s->loop->be->name);
	s->exit_code = 0;
	shard_run(s);
	if (s->exit_code == 0)
		log_debug("closed cleanly");
out:
	mq_free(&s->mq);
	PQfinish(s->pg);
	s->pg = NULL;
	buf_free(&s->batch[0].data);
	buf_free(&s->batch[1].data);
	loop_destroy(s->loop);
	s->loop = NULL;
	atomic_store(&s->stats.consuming, false);
	atomic_store(&s->finished, true);
	/* Wake the main thread, which waits for signals. */
	kill(getpid(), SIGUSR1);
	return NULL;
}

struct shard *shard_start(int id, const struct config *cfg, const char *copy_sql)
{
	struct shard *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->id = id;
	s->cfg = cfg;
	s->copy_sql = copy_sql;
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
