/* Shared declarations for the load generator: the parsed configuration, the
 * per-connection worker, body rendering and the small clock helpers used by
 * all three source files (loadgen.c, publish.c, body.c). */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <amqp.h>

#define LG_VERSION "0.1.0"
#define LG_NS_PER_S 1000000000ull

/*
 * Message layout (what tests can rely on):
 *
 *   seq         global 0-based sequence number, unique across connections.
 *               Connection i of C publishes seq = i, i+C, i+2C, ... (strided);
 *               with --count N it publishes every such seq below N.
 *   queue       the k-th message of connection i (seq = i + k*C) goes to
 *               queues[(k + i) % Q], Q the number of queues.
 *   message_id  "<seed>-<seq>", both in decimal.
 *   timestamp   publish time, seconds since the epoch.
 *   headers     "seq" (int64), "shape" (string: json|bytes|text) and, with
 *               --timestamp-us, "x-publish-us" (int64, µs since the epoch).
 *   body        deterministic from (seed, seq); see body.c.
 */

enum lg_shape { LG_SHAPE_JSON, LG_SHAPE_BYTES, LG_SHAPE_TEXT };

struct lg_config {
	char *url_copy; /* amqp_parse_url() output; `amqp` points into it */
	struct amqp_connection_info amqp;
	char **queues;
	size_t nqueues;
	bool declare;
	bool purge;
	uint64_t count;  /* total messages; UINT64_MAX with --duration */
	double duration; /* seconds; 0 with --count */
	double rate;     /* total msgs/s; 0 = unpaced */
	unsigned connections;
	unsigned confirm_window;
	size_t size;
	enum lg_shape shape;
	uint64_t seed;
	uint64_t poison_every; /* json: every Nth body is invalid; 0 = none */
	bool persistent;
	bool timestamp_us;
	bool json;
};

/* Why the run is stopping: 0 = keep going, a signal number, or LG_STOP_ERROR
 * when a connection failed. The only global besides the config. */
#define LG_STOP_ERROR (-1)
extern atomic_int lg_stop;

struct lg_body {
	uint8_t *data;
	size_t cap;
};

/* One entry per unconfirmed delivery tag, indexed by tag % window. */
struct lg_slot {
	uint32_t size;
	uint8_t state;
};

struct lg_worker {
	const struct lg_config *cfg;
	unsigned index;
	amqp_connection_state_t conn;
	pthread_t thread;
	uint64_t start_ns;
	uint64_t deadline_ns; /* 0 unless --duration */
	uint64_t quota;       /* messages this connection publishes */
	uint64_t end_ns;      /* when the last confirm arrived (or we gave up) */

	/* Publisher-confirm bookkeeping: tags in [low_tag, next_tag) are in flight. */
	struct lg_slot *ring;
	uint64_t next_tag;
	uint64_t low_tag;

	struct lg_body body;
	char message_id[48];
	amqp_table_entry_t headers[3];
	amqp_basic_properties_t props;
	bool said_blocked;
	bool said_returned;

	/* Written by the worker only; read by the main thread for progress. */
	_Atomic uint64_t sent;
	_Atomic uint64_t confirmed;
	_Atomic uint64_t bytes;
	_Atomic uint64_t nacked;
	_Atomic uint64_t returned;
	_Atomic uint64_t unconfirmed;
	atomic_bool failed_hard; /* connection or protocol error */
	atomic_bool done;
};

/* body.c */
int lg_shape_parse(const char *name, enum lg_shape *out);
const char *lg_shape_name(enum lg_shape shape);
const char *lg_shape_content_type(enum lg_shape shape);
int lg_body_init(struct lg_body *b, size_t size);
void lg_body_free(struct lg_body *b);
size_t lg_body_render(struct lg_body *b, enum lg_shape shape, size_t size,
		      uint64_t seed, uint64_t seq);

/* publish.c */
int lg_setup_queues(const struct lg_config *cfg);
int lg_worker_open(struct lg_worker *w, const struct lg_config *cfg,
		   unsigned index);
int lg_worker_start(struct lg_worker *w, uint64_t start_ns);
void lg_worker_free(struct lg_worker *w);

/* loadgen.c */
void lg_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline uint64_t lg_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * LG_NS_PER_S + (uint64_t)ts.tv_nsec;
}

static inline void lg_sleep_ns(uint64_t ns)
{
	struct timespec ts = {
		.tv_sec = (time_t)(ns / LG_NS_PER_S),
		.tv_nsec = (long)(ns % LG_NS_PER_S),
	};

	nanosleep(&ts, NULL); /* an early wake-up (EINTR) is fine: callers loop */
}

#endif
