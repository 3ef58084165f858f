/* Loading one batch into PostgreSQL on one connection. First the plain
 * load: the batch's rows and its dead letters, in one implicit transaction.
 * When PostgreSQL rejects rows for their data (pg_classify: PG_ROW), the
 * batch is loaded again in pieces inside one explicit transaction, each
 * piece behind a savepoint that is rolled back when the piece fails, until
 * the rows at fault are isolated (pg/isolate.h); they become dead letters
 * and the last statement writes those and commits. Nothing of a batch
 * commits before all of it is settled. */
#ifndef SLUICE_PG_LOAD_H
#define SLUICE_PG_LOAD_H

#include <stdbool.h>

#include "batch.h"
#include "config.h"
#include "pg/copy.h"
#include "pg/isolate.h"
#include "pg/schema.h"

enum load_result {
	LOAD_PENDING, /* wait for load_want()'s socket events, then load_step */
	LOAD_DONE,    /* committed: ack the batch */
	LOAD_RETRY,   /* transient failure: reconnect, then load the batch again */
	LOAD_FATAL,   /* a setting must change; logged */
};

enum load_job { LOAD_IDLE, LOAD_SETUP, LOAD_PLAIN, LOAD_PIECE, LOAD_FINAL };

struct loader {
	const struct config *cfg;
	const struct sql_plan *plan;
	struct pgc pgc;
	enum load_job job;
	struct buf sql;	      /* the text of the statement in flight */
	struct batch *batch;
	/* Isolation: */
	bool isolating;
	bool begun;	      /* BEGIN sent */
	bool last_failed;     /* the previous piece failed: roll back to the savepoint */
	struct isolate iso;
	struct iso_range piece;
	size_t dead_len0;     /* the batch's dead letters before isolation */
	uint32_t ndead0;
	uint32_t found;	      /* rows isolated */
};

void load_init(struct loader *l, const struct config *cfg, const struct sql_plan *plan);
void load_free(struct loader *l);
/* A new connection (or NULL when there is none): whatever was in flight
 * is forgotten, and a batch being isolated starts over. */
void load_attach(struct loader *l, PGconn *conn);
/* The plan's per-connection setup; LOAD_DONE at once when there is none. */
enum load_result load_setup(struct loader *l);
enum load_result load_start(struct loader *l, struct batch *b);
enum load_result load_step(struct loader *l);
/* Make a COPY still sending fail, so that nothing of it commits. */
static inline void load_abandon(struct loader *l) { pgc_abort(&l->pgc); }
static inline bool load_busy(const struct loader *l) { return l->job != LOAD_IDLE; }
/* In the explicit transaction of an isolation (only closing the connection
 * ends it cleanly if the batch is given up). */
static inline bool load_in_transaction(const struct loader *l)
{
	return l->isolating && l->begun;
}
/* Rows of the last settled batch that went into the table. */
static inline uint32_t load_loaded(const struct loader *l) { return l->batch->nrows - l->found; }
static inline unsigned load_want(const struct loader *l) { return l->pgc.want; }
/* Why the last job failed, for logs: "message (SQLSTATE xxxxx)". */
const char *load_error(const struct loader *l, char *buf, size_t len);

#endif
