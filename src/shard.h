/* A shard: one thread pinned to one CPU that owns one io_uring loop, one
 * AMQP connection with one channel, one PostgreSQL connection, its batches
 * and its counters. Shards share only the read-only configuration, their
 * counters (read by the status line) and the stop request. */
#ifndef SLUICE_SHARD_H
#define SLUICE_SHARD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "pg/schema.h"

/* Written by the shard, read by the main thread's status line. */
struct shard_stats {
	_Atomic uint64_t rows;	  /* committed and acked */
	_Atomic uint64_t dead;	  /* dead letters committed (or rejects sent) */
	_Atomic uint64_t batches; /* committed COPYs */
	_Atomic uint64_t bytes;	  /* COPY bytes committed */
	_Atomic int64_t ready;	  /* queue's ready count at last poll; -1 unknown */
	_Atomic bool consuming;	  /* the consumer is registered with the broker */
};

struct shard;

struct shard *shard_start(int id, const struct config *cfg, const struct sql_plan *plan);
/* Ask the shard to cancel its consumer, commit and ack what it holds, and
 * close; safe from any thread. */
void shard_stop(struct shard *s);
bool shard_finished(const struct shard *s);
/* Join the thread; returns its exit status (0 clean, 1 failed) and frees it. */
int shard_join(struct shard *s);
const struct shard_stats *shard_stats(const struct shard *s);

#endif
